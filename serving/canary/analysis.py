"""Canary analysis: one window of observations, canary against its reference, to a typed decision.

The reference is a *baseline* where the rollout has one: a second instance of the stable
version, started with the canary and given the same share of traffic (Kayenta's practice), so
that an instance's age and history (caches, the evaluations it served) are not part of what the
comparison measures. The long-serving stable instance is the reference only where the policy
turns the baseline off. Below, "stable" is whichever reference the window is judged against.
(The baseline did not cure the good canaries rolled back in CI and the demo at ratios 1.3-1.7:
a canary rolled back against a baseline started beside it too. Those were the latency rule's
noise, mended in rule 3.)

Pure: no I/O, no clock. Rules, in order:
1. Errors: when the canary's error rate is confidently above the limit (the lower bound of its
   Wilson interval exceeds it) the canary fails at once, however few requests it saw.
2. Samples: fewer than the minimum on either side is inconclusive, never a pass.
3. Latency: time per output token (end-to-end latency / output tokens) and TTFT, canary vs
   stable over the same window. The canary fails when it is confidently slower than the policy
   tolerates: a one-sided Mann-Whitney U test (scipy) of the canary's latencies against the
   stable ones scaled by `max_latency_ratio`. Testing against the unscaled ones (is it slower at
   all?) and also asking the median ratio to exceed the limit fails good canaries at about the
   test's level on every check of every step: two instances of the same version, under the
   demo's users on 2 cores, showed median ratios from 0.46 to 2.18 in 15 s windows, and that
   rule failed 12 of 124 of them; the scaled test failed 0 (1 of 92 in 20 s windows). A canary
   twice as slow still fails about 3 windows in 4, three times as slow every one.

The driver looks at the growing window of a step every analysis interval. Testing latency at
p < 0.05 on each of those looks fails a good canary far more often than 5 % of the time (CI
showed one: TTFT ratio 1.35, p=0.048 over 10/14 requests, on a candidate as fast as stable), so
latency follows a Haybittle-Peto boundary: looks before the step has baked fail only at
`interim_p_value` (0.001), the look that ends the bake at 1 - `confidence`. Errors and refusals
may stop the canary at any look: they harm users now, and a version that neither errs nor
refuses cannot trip them by noise.
"""

from __future__ import annotations

import statistics

from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from fledge.outcome import Check, GateResult, Outcome
from fledge.policy import CanaryPolicy
from serving.gateway.metrics import Observation


class VersionWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    requests: int = 0
    errors: int = 0  # the backend failed: 5xx, broken streams, refused connections
    rejected: int = 0  # the backend refused the request: 4xx (not 429, which the gateway sends)
    per_token_latency_s: list[float] = Field(default_factory=list)
    ttft_s: list[float] = Field(default_factory=list)

    @classmethod
    def from_observations(cls, version: str, observations: list[Observation]) -> "VersionWindow":
        mine = [o for o in observations if o.version == version]
        ok = [o for o in mine if o.ok]
        return cls(
            version=version,
            requests=len(mine),
            errors=len(mine) - len(ok),
            rejected=sum(1 for o in ok if is_refusal(o.status)),
            per_token_latency_s=[o.e2e_s / o.output_tokens for o in ok if o.e2e_s is not None and o.output_tokens],
            ttft_s=[o.ttft_s for o in ok if o.ttft_s is not None],
        )


def is_refusal(status: int) -> bool:
    # 429 is the gateway's own rate limit and 499 a client that hung up: neither is the version's doing.
    return 400 <= status < 500 and status not in (429, 499)


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
