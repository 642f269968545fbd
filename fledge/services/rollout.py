"""Canary rollouts through the gateway: what the release flow's canary step and the hand-run
`fledge canary` both call. Decisions live in serving.canary; this module puts the backends in
place and drives the rollout, resuming a saved one."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable

from fledge.core.outcome import Outcome
from fledge.core.policy import CanaryPolicy
from serving.canary.analysis import CanaryAnalysis
from serving.canary.state_machine import Action, RolloutState
from serving.canary.driver import RolloutDriver, load_state
from serving.canary.window import VersionWindow
from serving.gateway.client import GatewayAdmin
from serving.gateway.routes import Backend
from serving.naming import baseline_key

Log = Callable[[str], None]


def place_backend(admin: GatewayAdmin, model: str, backend: Backend) -> None:
    """Register `backend` at weight 0 unless the gateway already routes that key to that URL."""
    table = admin.routes()
    current = table.backends.get(backend.version) if table else None
    if current is None or current.base_url != backend.base_url:
        admin.add_backend(model, backend)


def _on_tick(log: Log):
    def tick(state: RolloutState, analysis: CanaryAnalysis | None, action: Action) -> None:
        if action.kind.value != "wait" or (analysis and analysis.outcome is not Outcome.PASS and action.counts_as_inconclusive):
            log(f"Canary {state.canary_weight:3d} %: {action.kind.value} - {action.reason}")
    return tick


def run_canary(
    admin: GatewayAdmin, state_path: Path, policy: CanaryPolicy, model: str, stable: str, canary: str, canary_url: str,
    baseline_url: str | None = None, log: Log = print, control=None, paired=None,
) -> RolloutState:
    """Step the canary's share of traffic up as the policy says, analysing each window against
    the baseline instance (at `baseline_url`) or, without one, the stable version (and, with
    `paired`, the sampled mirrored pairs: see RolloutDriver). A saved
    rollout of the same versions is resumed (its weights re-applied first), not restarted."""
    place_backend(admin, model, Backend(version=canary, base_url=canary_url, role="canary"))
    baseline = baseline_key(stable) if baseline_url else None
    if baseline:
        place_backend(admin, model, Backend(version=baseline, base_url=baseline_url, role="baseline", served_model=stable))
    driver = RolloutDriver(admin, policy, state_path, on_tick=_on_tick(log), control=control, paired=paired)
    saved = load_state(state_path)
    if saved is not None and (saved.stable, saved.canary, saved.baseline) == (stable, canary, baseline):
        if saved.phase.terminal:
            log(f"The canary of {canary} had already ended ({saved.phase.value}) before this run")
            return saved
        log(f"Resuming the canary of {canary} at {saved.canary_weight} % (step {saved.step + 1})")
        return driver.resume()
    if saved is not None and saved.phase.terminal:
        state_path.unlink()  # a finished rollout of other versions; an unfinished one makes start() refuse
    log(f"Canary of {canary} against {f'a baseline instance of {stable}' if baseline else stable}: steps {policy.steps} %")
    return driver.start(model, stable, canary, baseline)


def live_figures(admin: GatewayAdmin, seconds: float = 60.0) -> dict[str, VersionWindow]:
    """What each route key's users saw over the last `seconds`."""
    by_key = defaultdict(list)
    for observation in admin.recent(seconds):
        by_key[observation.version].append(observation)
    return {key: VersionWindow.from_observations(key, observations) for key, observations in by_key.items()}
