"""The deployed policy is protected configuration: a run may leave it as it is or strengthen it,
and weaken only the fields the policy itself lists in `overrides_allowed`.

A deployment fixes its policy when it is deployed (content and hash in its parameters); a run's
parameters may carry a different policy (a custom run in the UI) or dotted `overrides`. Both are
judged field by field against the deployed one, each field by the direction its schema states
(fledge.core.directions), so no field escapes the check. Pure: policies in, the weakenings (or a
refusal naming each rule) out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from fledge.core.directions import Weakens, direction_of, is_weaker
from fledge.core.errors import FledgeError
from fledge.core.policy import ReleasePolicy


class PolicyRefused(FledgeError):
    """A run whose policy weakens the deployed one where the policy does not allow it."""


@dataclass(frozen=True)
class Weakening:
    path: str  # dotted, e.g. canary.steps
    before: Any
    after: Any
    weakens: Weakens

    def describe(self) -> str:
        rule = {Weakens.RAISING: "a higher value is weaker", Weakens.LOWERING: "a lower value is weaker",
                Weakens.DISABLING: "turning it off is weaker", Weakens.ENABLING: "turning it on is weaker",
                Weakens.DROPPING: "removing an element is weaker", Weakens.ADDING: "adding an element is weaker",
                Weakens.CHANGING: "any change is weaker"}[self.weakens]
        return f"{self.path} {_show(self.before)} -> {_show(self.after)} ({rule})"


def _show(value: Any) -> str:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def weakenings(deployed: BaseModel, proposed: BaseModel, prefix: str = "") -> list[Weakening]:
    """Every field of `proposed` weaker than in `deployed`, by its schema's direction."""
    found: list[Weakening] = []
    for name, info in type(deployed).model_fields.items():
        before, after = getattr(deployed, name), getattr(proposed, name)
        path = f"{prefix}{name}"
        direction = direction_of(info)
        if direction is None:  # a section: judged field by field
            found += weakenings(before, after, f"{path}.")
        elif is_weaker(direction, before, after):
            found.append(Weakening(path, before, after, direction))
    return found


def _allowed(path: str, allowed: list[str]) -> bool:
    return any(path == entry or path.startswith(entry + ".") for entry in allowed)


def apply_overrides(policy: ReleasePolicy, overrides: dict[str, Any] | None) -> ReleasePolicy:
    """The policy with dotted-path `overrides` set (e.g. {"canary.bake_seconds": 30}), validated."""
    if not overrides:
        return policy
    data = policy.model_dump(mode="json")
    for path, value in overrides.items():
        parts = str(path).split(".")
        node = data
        for part in parts[:-1]:
            if not isinstance(node, dict) or not isinstance(node.get(part), dict):
                raise PolicyRefused(f"Override {path!r} names no policy field: {part!r} is not a section "
                                    "(see policies/default.yaml for the fields).")
            node = node[part]
        if parts[-1] not in node:
            raise PolicyRefused(f"Override {path!r} names no policy field (see policies/default.yaml for the fields).")
        node[parts[-1]] = value
    try:
        return ReleasePolicy.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise PolicyRefused(f"The overrides {overrides} make the policy invalid: {problems}.") from None


def check_run_policy(deployed: ReleasePolicy, proposed: ReleasePolicy, auto_approve: bool) -> list[Weakening]:
    """Raise PolicyRefused, one paragraph per rule broken, unless the run's policy weakens the
    deployed one only where `deployed.overrides_allowed` says it may and auto-approval is one the
    policy permits; returns the allowed weakenings (for the release's record)."""
    found = weakenings(deployed, proposed)
    refused = [w for w in found if not _allowed(w.path, deployed.overrides_allowed)]
    paragraphs = []
    if refused:
        paragraphs.append(
            f"The run's policy weakens the deployed policy (hash {deployed.content_hash}) where it does not allow it: "
            + "; ".join(w.describe() for w in refused) + ". A run may only strengthen these fields; to change them, "
            "redeploy with the changed policy (`fledge deploy --policy FILE`), or list them in the policy's "
            "overrides_allowed.")
    if auto_approve and proposed.approval.required and not deployed.approval.allow_auto_approve:
        paragraphs.append(
            "auto_approve cannot stand in for the approval the policy requires (approval.allow_auto_approve is "
            "false): run without it and answer the approval form in the Prefect UI.")
    if paragraphs:
        raise PolicyRefused("\n\n".join(paragraphs))
    return [w for w in found if w not in refused]
