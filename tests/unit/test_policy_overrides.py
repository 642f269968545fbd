"""The deployed policy as protected configuration (fledge.core.overrides): every field says which
way weakens it, and a run's policy or overrides that weaken it are refused, naming the rule."""

from typing import Annotated

import pytest
from pydantic import BaseModel

from fledge.core.directions import RAISING, Weakens, direction_of
from fledge.core.overrides import PolicyRefused, apply_overrides, check_run_policy, weakenings
from fledge.core.policy import ReleasePolicy, _Strict, load_policy

DEPLOYED = load_policy()


def leaves(model: BaseModel, prefix=""):
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if direction_of(info) is None:
            yield from leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", direction_of(info), value


def with_value(policy: BaseModel, path: str, value) -> BaseModel:
    head, _, rest = path.partition(".")
    if not rest:
        return policy.model_copy(update={head: value})
    return policy.model_copy(update={head: with_value(getattr(policy, head), rest, value)})


def weaker(direction: Weakens, value):
    if direction is Weakens.RAISING:
        return value * 2 + 1
    if direction is Weakens.LOWERING:
        return value / 2 if isinstance(value, float) else value - 1
    if direction is Weakens.DISABLING:
        return False
    if direction is Weakens.ENABLING:
        return True
    if direction is Weakens.DROPPING:
        return value[1:]
    if direction is Weakens.ADDING:
        return [*value, "canary"]
    return "something else"


def test_a_policy_section_whose_field_says_nothing_of_its_direction_is_refused_at_definition():
    with pytest.raises(TypeError, match="threshold say nothing of which way weakens them"):
        class Section(_Strict):
            limit: Annotated[float, RAISING] = 1.0
            threshold: float = 0.5


def test_every_field_is_checked_by_its_direction():
    checked = 0
    for path, direction, value in leaves(DEPLOYED):
        if direction is Weakens.NEVER:
            assert weakenings(DEPLOYED, with_value(DEPLOYED, path, weaker(Weakens.RAISING, value) if isinstance(
                value, (int, float)) and not isinstance(value, bool) else "changed")) == []
            continue
        if direction in (Weakens.DISABLING, Weakens.ENABLING) and value == weaker(direction, value):
            value = not value  # already at its weaker setting: flip the deployed one to judge the move
            deployed = with_value(DEPLOYED, path, value)
        elif direction is Weakens.DROPPING and len(value) < 1 or value is None and direction is not Weakens.CHANGING:
            continue
        else:
            deployed = DEPLOYED
        found = weakenings(deployed, with_value(deployed, path, weaker(direction, value)))
        assert [w.path for w in found] == [path], (path, direction)
        checked += 1
    assert checked > 80  # the whole policy, not a few fields


def test_a_run_that_skips_the_approval_and_the_canary_is_refused_before_any_work_naming_each_field():
    deployed = with_value(DEPLOYED, "approval.required", True)
    weakened = with_value(with_value(deployed, "approval.required", False), "canary.steps", [100])
    with pytest.raises(PolicyRefused) as refused:
        check_run_policy(deployed, weakened, auto_approve=False)
    message = str(refused.value)
    assert "approval.required True -> False (turning it off is weaker)" in message
    assert "canary.steps [25, 50, 100] -> [100] (any change is weaker)" in message
    assert deployed.content_hash in message and "overrides_allowed" in message


def test_strengthening_is_always_allowed_and_a_listed_override_may_weaken():
    stricter = apply_overrides(DEPLOYED, {"canary.confidence": 0.99, "watch.window_seconds": 600})
    assert check_run_policy(DEPLOYED, stricter, auto_approve=False) == []
    longer_bake = apply_overrides(DEPLOYED, {"canary.bake_seconds": 5})
    with pytest.raises(PolicyRefused, match="canary.bake_seconds"):
        check_run_policy(DEPLOYED, longer_bake, auto_approve=False)
    permissive = DEPLOYED.model_copy(update={"overrides_allowed": ["canary"]})
    allowed = check_run_policy(permissive, longer_bake.model_copy(update={"overrides_allowed": ["canary"]}), False)
    assert [w.path for w in allowed] == ["canary.bake_seconds"]


def test_auto_approve_stands_in_for_a_required_approval_only_where_the_policy_permits_it():
    required = with_value(DEPLOYED, "approval.required", True)
    with pytest.raises(PolicyRefused, match="approval.allow_auto_approve is false"):
        check_run_policy(required, required, auto_approve=True)
    permitting = with_value(required, "approval.allow_auto_approve", True)
    assert check_run_policy(permitting, permitting, auto_approve=True) == []
    assert check_run_policy(DEPLOYED, DEPLOYED, auto_approve=True) == []  # nothing to approve


def test_overrides_that_name_no_field_or_break_the_policy_are_refused_with_the_fix():
    with pytest.raises(PolicyRefused, match="names no policy field"):
        apply_overrides(DEPLOYED, {"canary.bake_minutes": 3})
    with pytest.raises(PolicyRefused, match="canary.steps"):
        apply_overrides(DEPLOYED, {"canary.steps": [50, 25]})
    assert isinstance(apply_overrides(DEPLOYED, {}), ReleasePolicy)
