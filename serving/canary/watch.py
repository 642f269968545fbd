"""The post-promotion watch: the new champion's figures over a window, judged against the
policy's absolute service levels and against what the previous champion showed while it was
the stable side of the canary.

Pure: observations in, a typed decision out. The release flow polls it while the window runs
(a breach rolls back at once) and once more when the window closes (anything short of a pass
then rolls back too: no data is never a pass). The minimum samples come first: a point
estimate over a handful of requests (1 failure in 3) is not a breach. Errors are judged by the
canary's rule (serving.canary.rates): confidently above the limit or above the previous
champion's rate.
"""

from __future__ import annotations

from fledge.core.outcome import Check, GateResult, Outcome
from fledge.core.policy import WatchPolicy
from serving.canary.rates import excess_rate_check
from serving.canary.window import VersionWindow


def _limit_check(name: str, measured: float | None, limit: float, unit: str) -> Check:
    if measured is None:
        return Check(name=name, outcome=Outcome.INCONCLUSIVE, limit=limit, detail="no measurement in the window")
    outcome = Outcome.FAIL if measured > limit else Outcome.PASS
    return Check(name=name, outcome=outcome, measured=measured, limit=limit, detail=f"{measured:.1f} {unit} (limit {limit:g} {unit})")


def _ratio_check(name: str, current: float | None, previous: float | None, limit: float) -> Check | None:
    if previous is None or current is None or previous <= 0:
        return None
    ratio = current / previous
    outcome = Outcome.FAIL if ratio > limit else Outcome.PASS
    return Check(name=name, outcome=outcome, measured=ratio, limit=limit,
                 detail=f"{current:.1f} ms vs {previous:.1f} ms for the previous champion: ratio {ratio:.2f} (limit {limit:g})")


def judge_watch(current: VersionWindow, previous: VersionWindow | None, policy: WatchPolicy, *,
                window_closed: bool = True) -> GateResult:
    """While the window runs (`window_closed=False`) only the absolute limits can breach: the
    comparison with the previous champion waits for the whole window, because the first
    requests after the switch (one server now taking all the traffic) are the noisiest, and a
    ratio of two medians over 20 of them rolled back a good release in the demo (1.51 vs 1.5)."""
    if current.requests < policy.min_samples:
        return GateResult.from_checks("watch", [Check(
            name="samples", outcome=Outcome.INCONCLUSIVE, measured=float(current.requests), limit=float(policy.min_samples),
            detail=f"{current.requests} requests in the window; {policy.min_samples} are needed")])
    level = 1 - policy.confidence if window_closed else policy.interim_p_value
    checks = [excess_rate_check("error rate", current.errors, current.requests,
                                previous.errors if previous else 0, previous.requests if previous else 0,
                                policy.max_error_rate, level)]
    refused = current.rejected / current.requests
    baseline = previous.rejected / previous.requests if previous and previous.requests else 0.0
    limit = baseline + policy.max_error_rate
    checks.append(Check(name="refused requests", outcome=Outcome.FAIL if refused > limit else Outcome.PASS,
                        measured=refused, limit=limit,
                        detail=f"{current.rejected}/{current.requests} refused ({refused:.1%}; the previous champion "
                        f"refused {baseline:.1%})"))
    checks.append(_limit_check("TTFT p95", current.ms("ttft_s", 95), policy.max_ttft_p95_ms, "ms"))
    checks.append(_limit_check("inter-token latency p95", current.ms("itl_s", 95), policy.max_itl_p95_ms, "ms"))
    if previous is not None and window_closed:
        for check in (
            _ratio_check("time per output token vs previous champion", current.ms("per_token_latency_s", 50),
                         previous.ms("per_token_latency_s", 50), policy.max_ratio_vs_previous),
            _ratio_check("TTFT p95 vs previous champion", current.ms("ttft_s", 95), previous.ms("ttft_s", 95),
                         policy.max_ratio_vs_previous),
        ):
            if check is not None:
                checks.append(check)
    return GateResult.from_checks("watch", checks)
