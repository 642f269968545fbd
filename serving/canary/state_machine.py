"""The canary rollout as an explicit state machine whose decisions are pure.

`decide(state, analysis, policy, now, command)` returns the next action; `advance(state,
action, now)` returns the state after it was applied. Neither does I/O: the driver applies
actions to the gateway and saves the state, so a restarted driver resumes from it.

`now` is the driver's monotonic clock (it never steps); which observations belong to a step
is decided by the gateway's sequence numbers (`step_started_seq`), never by time.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from fledge.core.outcome import Outcome
from fledge.core.policy import CanaryPolicy
from serving.canary.analysis import CanaryAnalysis


class Phase(StrEnum):
    PENDING = "pending"  # nothing sent to the canary yet
    BAKING = "baking"  # the canary holds steps[step] % of traffic, being watched
    PROMOTED = "promoted"  # the canary took 100 % and is the new stable
    ROLLED_BACK = "rolled_back"  # all traffic back on stable

    @property
    def terminal(self) -> bool:
        return self in (Phase.PROMOTED, Phase.ROLLED_BACK)


class ActionKind(StrEnum):
    SET_WEIGHT = "set_weight"
    WAIT = "wait"
    PROMOTE = "promote"
    ROLLBACK = "rollback"


class Action(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ActionKind
    weight: int | None = None  # canary %, for SET_WEIGHT
    reason: str
    counts_as_inconclusive: bool = False  # a WAIT on a baked step that still has no verdict


class HistoryEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at: float
    action: ActionKind
    canary_weight: int
    reason: str
    analysis: Outcome | None = None


class RolloutState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    stable: str
    canary: str
    # The route key of the stable version's baseline instance, when the rollout has one: the
    # canary is then judged against it rather than against the long-serving stable instance.
    baseline: str | None = None
    phase: Phase = Phase.PENDING
    step: int = -1
    canary_weight: int = 0
    step_started_at: float | None = None
    # The gateway's observation sequence number when the rollout started and when the current
    # step's weights were set: the step's window is every observation after it.
    started_seq: int = 0
    step_started_seq: int = 0
    inconclusive_windows: int = 0
    failed_checks: list[str] = Field(default_factory=list)
    history: list[HistoryEntry] = Field(default_factory=list)


Command = Literal["abort", "promote"]


def resumed_after_pause(state: RolloutState, now: float, sequence: int, paused_s: float) -> RolloutState:
    """An operator paused the rollout and resumed it: the step bakes again from now, on a new
    window, so neither the pause's observations nor its length count towards the bake or the
    progress deadline (Argo Rollouts' pause holds the step the same way)."""
    entry = HistoryEntry(at=now, action=ActionKind.WAIT, canary_weight=state.canary_weight,
                         reason=f"resumed after a pause of {paused_s:.0f} s: the {state.canary_weight} % step bakes again")
    return state.model_copy(update={"step_started_at": now, "step_started_seq": sequence, "inconclusive_windows": 0,
                                    "history": state.history + [entry]})


def step_baked(state: RolloutState, policy: CanaryPolicy, now: float) -> bool:
    """Whether the current step has been watched for its full bake: the look at that moment
    is the step's final one, judged at the policy's nominal confidence."""
    return step_age(state, now) >= policy.bake_seconds


def step_age(state: RolloutState, now: float) -> float:
    started = now if state.step_started_at is None else state.step_started_at
    return max(0.0, now - started)


def decide(
    state: RolloutState, analysis: CanaryAnalysis | None, policy: CanaryPolicy, now: float, command: Command | None = None
) -> Action:
    if state.phase.terminal:
        return Action(kind=ActionKind.WAIT, reason=f"rollout already {state.phase.value}")
    if command == "abort":
        return Action(kind=ActionKind.ROLLBACK, reason="aborted by an operator")
    if command == "promote":
        return Action(kind=ActionKind.PROMOTE, reason="promoted by an operator")
    if state.phase is Phase.PENDING:
        if policy.steps[0] == 100:
            return Action(kind=ActionKind.PROMOTE, reason="the policy's only step is 100 %: direct promotion")
        return Action(kind=ActionKind.SET_WEIGHT, weight=policy.steps[0], reason=f"start the canary at {policy.steps[0]} %")

    outcome = analysis.outcome if analysis is not None else Outcome.INCONCLUSIVE
    if outcome is Outcome.FAIL:
        return Action(kind=ActionKind.ROLLBACK, reason="canary analysis failed: " + "; ".join(analysis.reasons))
    baked = step_baked(state, policy, now)
    if outcome in (Outcome.INCONCLUSIVE, Outcome.ERROR):
        why = "; ".join(analysis.reasons) if analysis is not None else "no analysis"
        if step_age(state, now) >= policy.progress_deadline_seconds:
            return Action(kind=ActionKind.ROLLBACK, reason=f"no decision {policy.progress_deadline_seconds:g} s into the "
                          f"{state.canary_weight} % step (the policy's progress deadline): no data is never a pass ({why})")
        # A window still filling during the bake is not evidence; a step that baked its full
        # time and still cannot be judged is, after a few more windows.
        if not baked:
            return Action(kind=ActionKind.WAIT, reason=f"collecting data at {state.canary_weight} % ({why})")
        if state.inconclusive_windows + 1 > policy.max_inconclusive_windows:
            return Action(kind=ActionKind.ROLLBACK, reason=f"still inconclusive {state.inconclusive_windows + 1} analyses "
                          f"after the {policy.bake_seconds:g} s bake: no data is never a pass ({why})")
        return Action(kind=ActionKind.WAIT, reason=f"inconclusive after the bake ({why})", counts_as_inconclusive=True)
    if not baked:
        return Action(kind=ActionKind.WAIT, reason=f"baking at {state.canary_weight} %")
    # The last step (100 %) is the promotion itself: at 100 % the stable version gets no
    # traffic left to compare with, so there is nothing to bake against.
    if state.step + 1 >= len(policy.steps) or policy.steps[state.step + 1] == 100:
        return Action(kind=ActionKind.PROMOTE, reason=f"baked {policy.bake_seconds:g} s at {state.canary_weight} % "
                      "with passing analysis; promote to 100 %")
    weight = policy.steps[state.step + 1]
    return Action(kind=ActionKind.SET_WEIGHT, weight=weight, reason=f"baked {policy.bake_seconds:g} s at {state.canary_weight} %; step up")


def advance(state: RolloutState, action: Action, now: float, analysis: CanaryAnalysis | None = None,
            sequence: int | None = None) -> RolloutState:
    """`sequence`: the gateway's newest observation number once the action was applied (the
    next step's window starts after it)."""
    update: dict = {}
    if action.kind is ActionKind.SET_WEIGHT:
        update = {"phase": Phase.BAKING, "step": state.step + 1, "canary_weight": action.weight,
                  "step_started_at": now, "inconclusive_windows": 0}
        if sequence is not None:
            update["step_started_seq"] = sequence
    elif action.kind is ActionKind.WAIT and not state.phase.terminal:
        update = {"inconclusive_windows": state.inconclusive_windows + 1 if action.counts_as_inconclusive else 0}
    elif action.kind is ActionKind.PROMOTE:
        update = {"phase": Phase.PROMOTED, "canary_weight": 100}
    elif action.kind is ActionKind.ROLLBACK:
        failed = [f"{c.name}: {c.detail}" for c in (analysis.checks if analysis else []) if c.outcome is Outcome.FAIL]
        update = {"phase": Phase.ROLLED_BACK, "canary_weight": 0, "failed_checks": state.failed_checks + failed}
    entry = HistoryEntry(at=now, action=action.kind, canary_weight=update.get("canary_weight", state.canary_weight),
                         reason=action.reason, analysis=analysis.outcome if analysis else None)
    # Waiting is logged only when something is learned, so the history stays readable.
    keep = action.kind is not ActionKind.WAIT or (analysis is not None and analysis.outcome is not Outcome.PASS)
    history = state.history + [entry] if keep else state.history
    return state.model_copy(update={**update, "history": history})
