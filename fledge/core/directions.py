"""Which way a policy field weakens the release's protection: the schema's own statement, one per
field, read by fledge.core.overrides to refuse a run parameter that weakens a deployed policy.

Every leaf field of the release policy carries one of these markers in its type
(`Annotated[float, RAISING]`); a policy section without one on some field fails at import
(`require_directions`), so a new threshold cannot slip past the check. The marker also shows in
the policy's JSON schema (`x-weakens`), so the Prefect UI's parameter form says it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Weakens(StrEnum):
    RAISING = "raising"  # a higher value is weaker (limits, margins, p-values)
    LOWERING = "lowering"  # a lower value is weaker (confidence, samples, bake times)
    DISABLING = "disabling"  # turning it off is weaker (a gate, the shadow step, an approval)
    ENABLING = "enabling"  # turning it on is weaker (raw text kept, auto-approval allowed)
    DROPPING = "dropping"  # removing an element is weaker (the quality tasks)
    ADDING = "adding"  # adding an element is weaker (overrides allowed)
    CHANGING = "changing"  # any change is weaker: no order says which way is safe (steps, approvers, a guard)
    NEVER = "never"  # no value weakens a gate (operational settings: log retention, a schedule)


@dataclass(frozen=True)
class Direction:
    weakens: Weakens

    def __get_pydantic_json_schema__(self, core_schema, handler):
        schema = handler(core_schema)
        schema["x-weakens"] = self.weakens.value
        return schema


RAISING = Direction(Weakens.RAISING)
LOWERING = Direction(Weakens.LOWERING)
DISABLING = Direction(Weakens.DISABLING)
ENABLING = Direction(Weakens.ENABLING)
DROPPING = Direction(Weakens.DROPPING)
ADDING = Direction(Weakens.ADDING)
CHANGING = Direction(Weakens.CHANGING)
NEVER = Direction(Weakens.NEVER)


def direction_of(field_info) -> Weakens | None:
    return next((m.weakens for m in field_info.metadata if isinstance(m, Direction)), None)


def is_weaker(direction: Weakens, before, after) -> bool:
    """Whether `after` weakens `before` for a field of this direction."""
    if before == after or direction is Weakens.NEVER:
        return False
    if direction is Weakens.CHANGING or before is None or after is None:
        return True
    if direction is Weakens.RAISING:
        return after > before
    if direction is Weakens.LOWERING:
        return after < before
    if direction is Weakens.DISABLING:
        return bool(before) and not after
    if direction is Weakens.ENABLING:
        return bool(after) and not before
    if direction is Weakens.DROPPING:
        return not set(after) >= set(before)
    if direction is Weakens.ADDING:
        return not set(after) <= set(before)
    raise ValueError(direction)


def require_directions(model_cls) -> None:
    """Every field of a policy section says which way weakens it, or is a section itself."""
    from pydantic import BaseModel

    missing = [name for name, info in model_cls.model_fields.items()
               if direction_of(info) is None
               and not (isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel))]
    if missing:
        raise TypeError(f"{model_cls.__name__}: fields {', '.join(missing)} say nothing of which way weakens them; "
                        "annotate each, e.g. Annotated[float, RAISING] (fledge.core.directions)")
