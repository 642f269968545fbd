"""Canary analysis: one window of observations, canary against its reference, to a typed decision.

The reference is a *baseline* where the rollout has one: a second instance of the stable
version started with the canary and given the same share (Kayenta's practice), so an
instance's age and history are not part of what is compared; otherwise the stable instance.
Below, "stable" is whichever reference the window is judged against.

Pure: no I/O, no clock. Rules, in order:
1. Errors: the canary fails at once when its error rate is confidently above the limit (the
   lower bound of its Wilson interval exceeds it), however few requests it saw.
2. Refusals: requests the canary refuses (4xx) at a rate above stable's by more than the
   limit (Fisher's exact test) fail it at once too.
3. Samples: fewer than the minimum on either side is inconclusive, never a pass.
4. Latency (time per output token, TTFT): the canary fails when it is confidently slower than
   the policy tolerates, a one-sided Mann-Whitney U test of its latencies against stable's
   scaled by `max_latency_ratio`. Testing "slower at all" instead fails good canaries at the
   test's level on every check of every step (measured: 12 of 124 A/A windows on 2 cores).

The driver looks at a step's growing window every interval, so latency follows a
Haybittle-Peto boundary: looks before the step has baked fail only at `interim_p_value`, the
look that ends the bake at 1 - `confidence`. Errors and refusals may stop the canary at any
look: they harm users now, and a version that neither errs nor refuses cannot trip them.
"""

from __future__ import annotations

import statistics

from scipy import stats

from fledge.core.outcome import Check, GateResult, Outcome
from fledge.core.policy import CanaryPolicy
from serving.canary.window import VersionWindow


def _refusal_check(stable: VersionWindow, canary: VersionWindow, policy: CanaryPolicy) -> Check | None:
    if not canary.requests or not stable.requests or not canary.rejected:
        return None
    canary_rate, stable_rate = canary.rejected / canary.requests, stable.rejected / stable.requests
    table = [[canary.rejected, canary.requests - canary.rejected], [stable.rejected, stable.requests - stable.rejected]]
    p_value = float(stats.fisher_exact(table, alternative="greater").pvalue)
    failing = p_value < 1 - policy.confidence and canary_rate - stable_rate > policy.max_error_rate
    return Check(
        name="refused requests", outcome=Outcome.FAIL if failing else Outcome.PASS, measured=canary_rate,
        limit=stable_rate + policy.max_error_rate,
        detail=f"{canary.rejected}/{canary.requests} refused by the canary vs {stable.rejected}/{stable.requests} "
        f"by stable (Fisher p={p_value:.3g})",
    )


class CanaryAnalysis(GateResult):
    pass


def _latency_check(name: str, stable: list[float], canary: list[float], policy: CanaryPolicy, final_look: bool) -> Check:
    if len(stable) < policy.min_samples or len(canary) < policy.min_samples:
        return Check(name=name, outcome=Outcome.INCONCLUSIVE, measured=float(min(len(stable), len(canary))),
                     limit=float(policy.min_samples), detail=f"{len(canary)} canary / {len(stable)} stable measurements")
    ratio = statistics.median(canary) / statistics.median(stable)
    tolerated = [value * policy.max_latency_ratio for value in stable]
    p_value = float(stats.mannwhitneyu(canary, tolerated, alternative="greater").pvalue)
    level = 1 - policy.confidence if final_look else policy.interim_p_value
    detail = (f"canary/stable median ratio {ratio:.2f} (limit {policy.max_latency_ratio:.2f}); slower than the limit "
              f"allows: Mann-Whitney p={p_value:.3g} (needs < {level:.3g} at {'the end of the bake' if final_look else 'an early look'}) "
              f"over {len(canary)}/{len(stable)} requests")
    outcome = Outcome.FAIL if p_value < level else Outcome.PASS
    return Check(name=name, outcome=outcome, measured=ratio, limit=policy.max_latency_ratio, detail=detail)


def analyze(stable: VersionWindow, canary: VersionWindow, policy: CanaryPolicy, final_look: bool = True) -> CanaryAnalysis:
    """`final_look`: this analysis ends the step's bake (a one-off analysis is a final look)."""
    checks: list[Check] = []
    if canary.requests:
        rate = canary.errors / canary.requests
        low = stats.binomtest(canary.errors, canary.requests).proportion_ci(policy.confidence, method="wilson").low
        failing = low > policy.max_error_rate
        checks.append(Check(
            name="canary errors", outcome=Outcome.FAIL if failing else Outcome.PASS, measured=rate,
            limit=policy.max_error_rate,
            detail=f"{canary.errors}/{canary.requests} failed ({rate:.1%}; lower bound {low:.1%})",
        ))
        if failing:  # fail at once: no need to wait for the samples or the window
            return CanaryAnalysis.from_checks("canary", checks)
    refusals = _refusal_check(stable, canary, policy)
    if refusals is not None:
        checks.append(refusals)
        if refusals.outcome is Outcome.FAIL:
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
