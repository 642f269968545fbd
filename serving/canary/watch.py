"""The post-promotion watch: the new champion's figures over a window, judged against the
policy's absolute service levels and against what the previous champion showed while it was
the stable side of the canary.

Pure: observations in, a typed decision out. The release flow polls it while the window runs
(a breach rolls back at once) and once more when the window closes (anything short of a pass
then rolls back too: no data is never a pass).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from fledge.outcome import Check, GateResult, Outcome
from fledge.policy import WatchPolicy
from serving.canary.analysis import is_refusal
from serving.gateway.metrics import Observation


class ServiceFigures(BaseModel):
    """What users of one version experienced over a window."""

    model_config = ConfigDict(extra="forbid")

    version: str
    requests: int
    errors: int
    rejected: int
    ttft_p95_ms: float | None  # streamed requests only
    itl_p95_ms: float | None  # per-request mean gap between streamed chunks
    tpot_p50_ms: float | None  # end-to-end latency / output tokens

    @classmethod
    def from_observations(cls, version: str, observations: list[Observation]) -> "ServiceFigures":
        mine = [o for o in observations if o.version == version]
        ok = [o for o in mine if o.ok and o.status < 400]

        def percentile(values: list[float], q: float) -> float | None:
            return float(np.percentile(values, q)) * 1000 if values else None

        return cls(
            version=version,
            requests=len(mine),
            errors=sum(1 for o in mine if not o.ok),
            rejected=sum(1 for o in mine if o.ok and is_refusal(o.status)),
            ttft_p95_ms=percentile([o.ttft_s for o in ok if o.ttft_s is not None], 95),
            itl_p95_ms=percentile([o.mean_itl_s for o in ok if o.mean_itl_s is not None], 95),
            tpot_p50_ms=percentile([o.e2e_s / o.output_tokens for o in ok if o.e2e_s and o.output_tokens], 50),
        )


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


def judge_watch(current: ServiceFigures, previous: ServiceFigures | None, policy: WatchPolicy) -> GateResult:
    checks: list[Check] = []
    if current.requests:
        rate = current.errors / current.requests
        checks.append(Check(name="error rate", outcome=Outcome.FAIL if rate > policy.max_error_rate else Outcome.PASS,
                            measured=rate, limit=policy.max_error_rate,
                            detail=f"{current.errors}/{current.requests} failed ({rate:.1%}, limit {policy.max_error_rate:.1%})"))
        refused = current.rejected / current.requests
        baseline = previous.rejected / previous.requests if previous and previous.requests else 0.0
        limit = baseline + policy.max_error_rate
        checks.append(Check(name="refused requests", outcome=Outcome.FAIL if refused > limit else Outcome.PASS,
                            measured=refused, limit=limit,
                            detail=f"{current.rejected}/{current.requests} refused ({refused:.1%}; the previous champion "
                            f"refused {baseline:.1%})"))
    if current.requests < policy.min_samples:
        checks.append(Check(name="samples", outcome=Outcome.INCONCLUSIVE, measured=float(current.requests),
                            limit=float(policy.min_samples),
                            detail=f"{current.requests} requests in the window; {policy.min_samples} are needed"))
        return GateResult.from_checks("watch", checks)
    checks.append(_limit_check("TTFT p95", current.ttft_p95_ms, policy.max_ttft_p95_ms, "ms"))
    checks.append(_limit_check("inter-token latency p95", current.itl_p95_ms, policy.max_itl_p95_ms, "ms"))
    if previous is not None:
        for check in (
            _ratio_check("time per output token vs previous champion", current.tpot_p50_ms, previous.tpot_p50_ms,
                         policy.max_ratio_vs_previous),
            _ratio_check("TTFT p95 vs previous champion", current.ttft_p95_ms, previous.ttft_p95_ms,
                         policy.max_ratio_vs_previous),
        ):
            if check is not None:
                checks.append(check)
    return GateResult.from_checks("watch", checks)
