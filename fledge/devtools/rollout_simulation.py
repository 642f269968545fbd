"""The canary's decision rules run on simulated traffic: how often a good canary is rolled
back (the A/A false-rollback rate) and how many requests a bad one serves before it is.

The decisions are the real ones (serving.canary.analysis.analyze, controller.decide and
advance, the driver's traffic split); only the traffic is drawn: users send
`users_per_second`, the canary and its baseline get their step's shares of them, each request
fails with its version's probability or takes a lognormal time per token. The clock is the
look count times the policy's interval, as the driver sees it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fledge.core.policy import CanaryPolicy
from serving.canary.analysis import analyze
from serving.canary.state_machine import Phase, RolloutState, advance, decide, step_baked
from serving.canary.driver import split_traffic
from serving.canary.window import VersionWindow


@dataclass(frozen=True)
class SimulatedRollout:
    phase: Phase
    canary_requests: int  # requests the canary served before the rollout ended
    reason: str


def _window(version: str, latencies: list[float], failures: int) -> VersionWindow:
    return VersionWindow(version=version, requests=len(latencies) + failures, errors=failures,
                         per_token_latency_s=latencies, ttft_s=[value * 3 for value in latencies])


def _count(expected: float, rng: random.Random) -> int:
    whole = int(expected)
    return whole + (rng.random() < expected - whole)


def simulate_rollout(policy: CanaryPolicy, canary_error_rate: float, baseline_error_rate: float,
                     users_per_second: float, rng: random.Random, latency_ms: float = 30.0) -> SimulatedRollout:
    state = RolloutState(model="sim", stable="sim/1", canary="sim/2", baseline="sim/1+baseline")
    now, served = 0.0, 0
    canary_ok: list[float] = []
    baseline_ok: list[float] = []
    canary_failed = baseline_failed = 0
    per_look = users_per_second * policy.analysis_interval_seconds
    while not state.phase.terminal:
        analysis = None
        if state.phase is Phase.BAKING:
            split = split_traffic(state, state.canary_weight)
            for version, error_rate, ok in (("sim/2", canary_error_rate, canary_ok),
                                            ("sim/1+baseline", baseline_error_rate, baseline_ok)):
                requests = _count(per_look * split[version] / 100, rng)
                failed = sum(rng.random() < error_rate for _ in range(requests))
                ok.extend(latency_ms / 1000 * rng.lognormvariate(0, 0.6) for _ in range(requests - failed))
                if version == "sim/2":
                    canary_failed, served = canary_failed + failed, served + requests
                else:
                    baseline_failed += failed
            analysis = analyze(_window("sim/1+baseline", baseline_ok, baseline_failed),
                               _window("sim/2", canary_ok, canary_failed), policy,
                               final_look=step_baked(state, policy, now))
        action = decide(state, analysis, policy, now)
        previous_step = state.step
        state = advance(state, action, now, analysis)
        if state.step != previous_step:  # a new step: a new window
            canary_ok, baseline_ok, canary_failed, baseline_failed = [], [], 0, 0
        now += policy.analysis_interval_seconds
    return SimulatedRollout(state.phase, served, state.history[-1].reason)
