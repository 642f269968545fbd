"""The post-promotion watch: the new champion's figures over a window, judged against the
policy's absolute service levels and against what the previous champion showed while it was
the stable side of the canary.

Pure: observations in, a typed decision out. The release flow polls it while the window runs
(a breach rolls back at once) and once more when the window closes (anything short of a pass
then rolls back too: no data is never a pass). The minimum samples come first: a point
estimate over a handful of requests (1 failure in 3) is not a breach. Errors are judged by the
canary's rule (serving.canary.rates): confidently above the limit or above the previous
champion's rate. Latency against the previous champion is the canary's test on the whole
distributions (serving.canary.latency), not a ratio of two p95s: tails are judged by the
absolute limits, which a short window's p95 can be trusted against.
"""

from __future__ import annotations

from fledge.core.outcome import Check, GateResult, Outcome
from fledge.core.policy import WatchPolicy
from serving.canary.latency import slower_than_tolerated_check
from serving.canary.rates import excess_rate_check
from serving.canary.window import VersionWindow


def _limit_check(name: str, measured: float | None, limit: float, unit: str) -> Check:
    if measured is None:
        return Check(name=name, outcome=Outcome.INCONCLUSIVE, limit=limit, detail="no measurement in the window")
    outcome = Outcome.FAIL if measured > limit else Outcome.PASS
    return Check(name=name, outcome=outcome, measured=measured, limit=limit, detail=f"{measured:.1f} {unit} (limit {limit:g} {unit})")


def judge_watch(current: VersionWindow, previous: VersionWindow | None, policy: WatchPolicy, *,
                window_closed: bool = True) -> GateResult:
    """While the window runs (`window_closed=False`) only the absolute limits can breach: the
    comparison with the previous champion waits for the whole window, because the first
    requests after the switch (one server now taking all the traffic) are the noisiest."""
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
        for name, series in (("time per output token", "per_token_latency_s"), ("time to first token", "ttft_s")):
            reference, latencies = getattr(previous, series), getattr(current, series)
            if min(len(reference), len(latencies)) < policy.min_samples:
                continue  # too few of this kind (streams give TTFT) to compare; the absolute limits above still hold
            checks.append(slower_than_tolerated_check(
                f"{name} vs previous champion", reference, latencies, policy.max_ratio_vs_previous,
                1 - policy.confidence, min_samples=policy.min_samples, labels=("new champion", "previous champion")))
    return GateResult.from_checks("watch", checks)
