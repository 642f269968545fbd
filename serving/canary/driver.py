"""The rollout driver: applies the controller's actions to the gateway, tick by tick, and
saves the state after each, so a restarted driver resumes (or rolls back) from where it was.

Side effects live here and only here: reading observations and setting weights through the
gateway's admin API, saving state, sleeping, and an optional callback to stop a version.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from fledge.policy import CanaryPolicy
from serving.canary.analysis import CanaryAnalysis, VersionWindow, analyze
from serving.canary.controller import Action, ActionKind, Command, Phase, RolloutState, advance, decide, step_baked
from serving.gateway.client import GatewayAdmin


def save_state(state: RolloutState, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(state.model_dump_json(indent=2))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, path)


def load_state(path: Path) -> RolloutState | None:
    if not path.is_file():
        return None
    return RolloutState.model_validate(json.loads(path.read_text()))


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
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        on_tick: Callable[[RolloutState, CanaryAnalysis | None, Action], None] | None = None,
        commands: Callable[[], Command | None] = lambda: None,
    ):
        self.admin = admin
        self.policy = policy
        self.state_path = state_path
        self.clock = clock
        self.sleep = sleep
        self.on_tick = on_tick
        self.commands = commands

    def start(self, model: str, stable: str, canary: str, baseline: str | None = None) -> RolloutState:
        existing = load_state(self.state_path)
        if existing is not None and not existing.phase.terminal:
            raise RuntimeError(
                f"a rollout of {existing.canary} is in progress ({self.state_path}); resume or abort it first"
            )
        state = RolloutState(model=model, stable=stable, canary=canary, baseline=baseline)
        save_state(state, self.state_path)
        return self.run(state)

    def resume(self) -> RolloutState:
        """Continue a saved rollout: its weights are re-applied first, so the gateway matches
        the saved state even if it was changed while the driver was down."""
        state = load_state(self.state_path)
        if state is None:
            raise FileNotFoundError(f"no rollout state at {self.state_path}")
        if not state.phase.terminal:
            self._set_canary_weight(state, state.canary_weight)
        return self.run(state)

    def abort(self) -> RolloutState:
        state = load_state(self.state_path)
        if state is None or state.phase.terminal:
            raise RuntimeError("no rollout in progress")
        action = decide(state, None, self.policy, self.clock(), command="abort")
        return self._apply(state, action, None)

    def analyze_window(self, state: RolloutState, now: float) -> CanaryAnalysis:
        observations = self.admin.observations(since=state.step_started_at or 0.0)
        reference = state.baseline or state.stable
        return analyze(VersionWindow.from_observations(reference, observations),
                       VersionWindow.from_observations(state.canary, observations), self.policy,
                       final_look=step_baked(state, self.policy, now))

    def run(self, state: RolloutState) -> RolloutState:
        while not state.phase.terminal:
            # One clock reading per look, so the analysis and the decision agree on whether the
            # step has baked (the analysis' significance level depends on it).
            now = self.clock()
            analysis = self.analyze_window(state, now) if state.phase is Phase.BAKING else None
            action = decide(state, analysis, self.policy, now, self.commands())
            state = self._apply(state, action, analysis)
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
        new_state = advance(state, action, self.clock(), analysis)
        save_state(new_state, self.state_path)
        if self.on_tick:
            self.on_tick(new_state, analysis, action)
        return new_state

    def _promote(self, state: RolloutState) -> None:
        """All traffic to the canary, which becomes the stable backend; the old stable stays
        registered at weight 0 (warm, for a watched window and a fast rollback)."""
        table = self.admin.routes()
        backends = dict(table.backends)
        backends[state.canary] = backends[state.canary].model_copy(update={"role": "stable", "weight": 100})
        backends[state.stable] = backends[state.stable].model_copy(update={"role": "canary", "weight": 0})
        if state.baseline in backends:  # its in-flight streams finish; the release then stops it
            backends[state.baseline] = backends[state.baseline].model_copy(update={"weight": 0, "draining": True})
        self.admin.put_routes(table.model_copy(update={"backends": backends}))
