"""The rollout driver: applies the controller's actions to the gateway, tick by tick, and
saves the state after each, so a restarted driver resumes (or rolls back) from where it was.

Side effects live here and only here: reading observations and setting weights through the
gateway's admin API, saving state and sleeping. Time is the monotonic clock (a wall-clock step
changes nothing); a step's window is every observation the gateway numbered after the step's
weights were set.

A gateway that does not answer is not a verdict: the look becomes an error (inconclusive), and
the policy's progress deadline rolls the rollout back if it lasts; an action that cannot be
applied (the gateway down) is tried again at the next look.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Literal

import httpx

from fledge.core.outcome import Outcome
from fledge.core.policy import CanaryPolicy
from fledge.core.state import read_json, write_atomic
from serving.canary.analysis import CanaryAnalysis, analyze
from serving.canary.state_machine import (Action, ActionKind, Command, Phase, RolloutState, advance, decide,
                                          resumed_after_pause, step_age, step_baked)
from serving.canary.window import VersionWindow
from serving.errors import RolloutConflict
from serving.gateway.client import GatewayAdmin, GatewayAdminError


def _transient(error: Exception) -> bool:
    return isinstance(error, httpx.TransportError) or (isinstance(error, GatewayAdminError) and error.retryable)


def save_state(state: RolloutState, path: Path) -> None:
    write_atomic(path, state.model_dump_json(indent=2))


def load_state(path: Path) -> RolloutState | None:
    saved = read_json(path)
    return None if saved is None else RolloutState.model_validate(saved)


def split_traffic(state: RolloutState, canary_weight: int) -> dict[str, int]:
    """Weights for a canary share. A baseline takes as much as the canary (where the rest
    allows), so the two are compared on equal samples; stable serves what is left."""
    if state.baseline is None:
        return {state.stable: 100 - canary_weight, state.canary: canary_weight}
    baseline_weight = min(canary_weight, 100 - canary_weight)
    return {state.stable: 100 - canary_weight - baseline_weight, state.baseline: baseline_weight,
            state.canary: canary_weight}


class RolloutDriver:
    def __init__(
        self,
        admin: GatewayAdmin,
        policy: CanaryPolicy,
        state_path: Path,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_tick: Callable[[RolloutState, CanaryAnalysis | None, Action], None] | None = None,
        control: Callable[[RolloutState], Command | Literal["pause"] | None] | None = None,
        paired: Callable[[], CanaryAnalysis | None] | None = None,
    ):
        """`control`: asked before every look what an operator wants: "abort" (all traffic back
        on stable now), "pause" (hold the weights, decide nothing), or None. It may raise to
        stop the driver where it is (the saved state resumes later). `paired`: at every look, the
        analysis of the sampled mirrored pairs (serving.canary.paired); its failed checks fail the
        look, apart from the weighted traffic's own analysis, which they never mix with."""
        self.admin = admin
        self.policy = policy
        self.state_path = state_path
        self.clock = clock
        self.sleep = sleep
        self.on_tick = on_tick
        self.control = control
        self.paired = paired

    def start(self, model: str, stable: str, canary: str, baseline: str | None = None) -> RolloutState:
        existing = load_state(self.state_path)
        if existing is not None and not existing.phase.terminal:
            raise RolloutConflict(
                f"A rollout of {existing.canary} is in progress ({self.state_path}); let it finish, or abort it first."
            )
        state = RolloutState(model=model, stable=stable, canary=canary, baseline=baseline,
                             started_seq=self.admin.sequence())
        save_state(state, self.state_path)
        return self.run(state)

    def resume(self) -> RolloutState:
        """Continue a saved rollout: its weights are re-applied first, so the gateway matches
        the saved state even if it was changed while the driver was down."""
        state = load_state(self.state_path)
        if state is None:
            raise RolloutConflict(f"There is no rollout to resume: no state at {self.state_path}.")
        if state.step_started_at is not None and state.step_started_at > self.clock():
            # Saved before a reboot (the monotonic clock restarted): the step's bake starts again.
            state = state.model_copy(update={"step_started_at": self.clock()})
        sequence = self.admin.sequence()
        if state.step_started_seq > sequence:  # the gateway's sequence restarted with the machine
            state = state.model_copy(update={"step_started_seq": sequence, "started_seq": min(state.started_seq, sequence)})
        if not state.phase.terminal:
            self._set_canary_weight(state, state.canary_weight)
        return self.run(state)

    def abort(self) -> RolloutState:
        """All traffic back on stable now, whatever the analysis says (an operator's Ctrl-C)."""
        state = load_state(self.state_path)
        if state is None or state.phase.terminal:
            raise RolloutConflict(f"There is no rollout in progress to abort ({self.state_path}).")
        action = decide(state, None, self.policy, self.clock(), command="abort")
        return self._apply(state, action, None)

    def analyze_window(self, state: RolloutState, now: float) -> CanaryAnalysis:
        try:
            observations = self.admin.observations(after=state.step_started_seq)
            ejected = self.admin.ejected()
        except Exception as error:
            if not _transient(error):
                raise
            return CanaryAnalysis.error("canary", f"the gateway did not answer ({type(error).__name__}: {error})")
        reference = state.baseline or state.stable
        analysis = analyze(VersionWindow.from_observations(reference, observations),
                           VersionWindow.from_observations(state.canary, observations), self.policy,
                           final_look=step_baked(state, self.policy, now), ejected=ejected)
        sampled = self.paired() if self.paired is not None and analysis.outcome is not Outcome.FAIL else None
        if sampled is not None and sampled.outcome is Outcome.FAIL:
            return CanaryAnalysis.from_checks("canary", analysis.checks + [c for c in sampled.checks
                                                                           if c.outcome is Outcome.FAIL])
        return analysis

    def run(self, state: RolloutState) -> RolloutState:
        paused_since: float | None = None
        while not state.phase.terminal:
            command = self.control(state) if self.control else None
            if command == "pause":
                paused_since = self.clock() if paused_since is None else paused_since
                self.sleep(self.policy.analysis_interval_seconds)
                continue
            if paused_since is not None and state.phase is Phase.BAKING:
                try:
                    sequence = self.admin.sequence()
                except Exception as error:
                    if not _transient(error):
                        raise
                    self.sleep(self.policy.analysis_interval_seconds)
                    continue
                state = resumed_after_pause(state, self.clock(), sequence, self.clock() - paused_since)
                save_state(state, self.state_path)
            paused_since = None
            # One clock reading per look, so the analysis and the decision agree on whether the
            # step has baked (the analysis' significance level depends on it).
            now = self.clock()
            analysis = self.analyze_window(state, now) if state.phase is Phase.BAKING and command is None else None
            action = decide(state, analysis, self.policy, now, command=command)
            try:
                state = self._apply(state, action, analysis)
            except Exception as error:
                # Twice the progress deadline without reaching the gateway: nothing here can make it safe.
                if not _transient(error) or step_age(state, self.clock()) > 2 * self.policy.progress_deadline_seconds:
                    raise
                self.sleep(self.policy.analysis_interval_seconds)
                continue
            if not state.phase.terminal and action.kind is ActionKind.WAIT:
                self.sleep(self.policy.analysis_interval_seconds)
        return state

    def _set_canary_weight(self, state: RolloutState, weight: int) -> None:
        self.admin.set_weights(split_traffic(state, weight))

    def _apply(self, state: RolloutState, action: Action, analysis: CanaryAnalysis | None) -> RolloutState:
        if action.kind is ActionKind.SET_WEIGHT:
            self._set_canary_weight(state, action.weight)
        elif action.kind is ActionKind.ROLLBACK:
            self._set_canary_weight(state, 0)
        elif action.kind is ActionKind.PROMOTE:
            self._promote(state)
        sequence = self.admin.sequence() if action.kind is ActionKind.SET_WEIGHT else None
        new_state = advance(state, action, self.clock(), analysis, sequence=sequence)
        save_state(new_state, self.state_path)
        if self.on_tick:
            self.on_tick(new_state, analysis, action)
        return new_state

    def _promote(self, state: RolloutState) -> None:
        """All traffic to the canary, which becomes the stable backend; the old stable stays
        registered at weight 0 (warm, for a watched window and a fast rollback); the baseline
        drains and the release then stops it."""
        self.admin.put_routes(self.admin.routes().all_to(state.canary))
