"""Canary analysis: one window of observations, canary against its reference, to a typed decision.

The reference is a *baseline* where the rollout has one: a second instance of the stable
version started with the canary and given the same share (Kayenta's practice), so an
instance's age and history are not part of what is compared; otherwise the stable instance.
Below, "stable" is whichever reference the window is judged against.

Pure: no I/O, no clock. Requests a client pinned to a version and requests the client
cancelled are not part of the sample (serving.canary.window). Rules, in order:
1. Ejection: a canary the gateway's outlier detection ejected (refused connections, failures
   in a row) fails at once; an ejected reference makes the comparison an error.
2. Errors (serving.canary.rates): the canary fails when its error rate is confidently above
   the limit or above the reference's; above the limit but not yet confidently is
   inconclusive, and so is a window that cannot yet rule out `ruled_out_error_rate` (0.10:
   29 requests without a failure), so a canary failing 10 % of requests is never promoted on
   the strength of a lucky 30.
3. Refusals: requests the canary refuses (4xx) at a rate above stable's by more than the
   limit (Fisher's exact test) fail it; client cancellations are compared the same way, as
   evidence that users gave up on it.
4. Samples: fewer than the minimum on either side is inconclusive, never a pass.
5. Latency (time per output token, TTFT): the canary fails when it is confidently slower than
   the policy tolerates, a one-sided Mann-Whitney U test of its latencies against stable's
   scaled by `max_latency_ratio`. Testing "slower at all" instead fails good canaries at the
   test's level on every check of every step (measured: 12 of 124 A/A windows on 2 cores).

The driver looks at a step's growing window every interval, so every test follows a
Haybittle-Peto boundary: looks before the step has baked fail only at `interim_p_value`, the
look that ends the bake (and any after it) at 1 - `confidence`. A canary that never errs
cannot trip the error rule at any look; one that fails every request fails it at any look
after its third failed request (binomial p = 0.05**3, under the interim level 0.001).
"""

from __future__ import annotations

from typing import Mapping

from fledge.core.outcome import Check, GateResult, Outcome
from fledge.core.policy import CanaryPolicy
from serving.canary.latency import slower_than_tolerated_check
from serving.canary.rates import excess_rate_check, more_often_check
from serving.canary.window import VersionWindow


class CanaryAnalysis(GateResult):
    pass


def _latency_check(name: str, stable: list[float], canary: list[float], policy: CanaryPolicy, final_look: bool) -> Check:
    level = 1 - policy.confidence if final_look else policy.interim_p_value
    return slower_than_tolerated_check(name, stable, canary, policy.max_latency_ratio, level,
                                       min_samples=policy.min_samples,
                                       look=" at the end of the bake" if final_look else " at an early look")


def analyze(stable: VersionWindow, canary: VersionWindow, policy: CanaryPolicy, final_look: bool = True,
            ejected: Mapping[str, str] | None = None) -> CanaryAnalysis:
    """`final_look`: this analysis ends the step's bake (a one-off analysis is a final look).
    `ejected`: the route keys the gateway's outlier detection has ejected, with why."""
    ejected = ejected or {}
    level = 1 - policy.confidence if final_look else policy.interim_p_value
    checks: list[Check] = []
    if canary.version in ejected:
        checks.append(Check(name="outlier ejection", outcome=Outcome.FAIL,
                            detail=f"the gateway ejected the canary: {ejected[canary.version]}"))
        return CanaryAnalysis.from_checks("canary", checks)
    if stable.version in ejected:
        checks.append(Check(name="outlier ejection", outcome=Outcome.ERROR,
                            detail=f"the gateway ejected the reference {stable.version} ({ejected[stable.version]}): "
                            "the canary cannot be compared with it"))
        return CanaryAnalysis.from_checks("canary", checks)
    if canary.requests:
        errors = excess_rate_check("canary errors", canary.errors, canary.requests, stable.errors, stable.requests,
                                   policy.max_error_rate, level, ruled_out=policy.ruled_out_error_rate,
                                   pass_level=1 - policy.confidence)
        checks.append(errors)
        if errors.outcome is Outcome.FAIL:  # at once: no need to wait for the samples or the window
            return CanaryAnalysis.from_checks("canary", checks)
    for check in (
        more_often_check("refused requests", "refused", (canary.rejected, canary.requests),
                         (stable.rejected, stable.requests), policy.max_error_rate, 1 - policy.confidence),
        more_often_check("cancelled requests", "cancelled by clients", (canary.cancelled, canary.requests + canary.cancelled),
                         (stable.cancelled, stable.requests + stable.cancelled), policy.max_error_rate, level),
    ):
        if check is not None:
            checks.append(check)
            if check.outcome is Outcome.FAIL:
                return CanaryAnalysis.from_checks("canary", checks)
    if canary.requests < policy.min_samples or stable.requests < policy.min_samples:
        checks.append(Check(
            name="samples", outcome=Outcome.INCONCLUSIVE, measured=float(min(canary.requests, stable.requests)),
            limit=float(policy.min_samples),
            detail=f"{canary.requests} canary and {stable.requests} stable requests in the window; "
            f"{policy.min_samples} of each are needed",
        ))
        return CanaryAnalysis.from_checks("canary", checks)
    checks.append(_latency_check("time per output token", stable.per_token_latency_s, canary.per_token_latency_s,
                                 policy, final_look))
    checks.append(_latency_check("time to first token", stable.ttft_s, canary.ttft_s, policy, final_look))
    return CanaryAnalysis.from_checks("canary", checks)
