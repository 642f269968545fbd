"""Gate decisions: pure functions from the policy and typed reports to a GateResult.

No I/O here. Each check says what it measured, against which limit, and why it decided so.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from fledge.core.outcome import Check, GateResult, Outcome
from evals.reports import PerformanceReport, QualityReport, SafetyReport, TaskScore
from fledge.core.policy import PerformanceGate, QualityGate, SafetyGate


def _z(confidence: float) -> float:
    return float(stats.norm.ppf(1 - (1 - confidence) / 2))


def _difference_interval(champion: TaskScore, candidate: TaskScore, confidence: float) -> tuple[float, float, float, str]:
    """Candidate minus champion with its confidence interval.

    Both models answer the same items, so where per-sample scores are available the
    difference is paired (its variance shrinks where the models agree); otherwise the two
    standard errors are combined as independent.
    """
    diff = candidate.value - champion.value
    shared = sorted(set(champion.per_sample) & set(candidate.per_sample))
    if len(shared) >= 2 and len(shared) == min(candidate.samples, champion.samples):
        deltas = np.array([candidate.per_sample[k] - champion.per_sample[k] for k in shared])
        se = float(deltas.std(ddof=1) / math.sqrt(len(deltas)))
        how = f"paired over {len(shared)} items"
    else:
        se_c = candidate.stderr if candidate.stderr is not None else math.sqrt(candidate.value * (1 - candidate.value) / candidate.samples)
        se_b = champion.stderr if champion.stderr is not None else math.sqrt(champion.value * (1 - champion.value) / champion.samples)
        se = math.hypot(se_c, se_b)
        how = "unpaired"
    half = _z(confidence) * se
    return diff, diff - half, diff + half, how


def quality_gate(policy: QualityGate, champion: QualityReport, candidate: QualityReport) -> GateResult:
    checks = []
    for task in policy.tasks:
        base, cand = champion.task(task), candidate.task(task)
        if base is None or cand is None:
            missing = "champion" if base is None else "candidate"
            checks.append(Check(name=task, outcome=Outcome.ERROR, detail=f"no {task} result for the {missing}"))
            continue
        if base.dataset_sha256 != cand.dataset_sha256:
            checks.append(Check(name=task, outcome=Outcome.ERROR, detail="champion and candidate were scored on different datasets"))
            continue
        n = min(base.samples, cand.samples)
        if n < policy.min_samples:
            checks.append(Check(
                name=task, outcome=Outcome.INCONCLUSIVE, measured=float(n), limit=float(policy.min_samples),
                detail=f"{n} samples; at least {policy.min_samples} are needed to tell",
            ))
            continue
        diff, low, high, how = _difference_interval(base, cand, policy.confidence)
        summary = (
            f"{cand.metric} {cand.value:.3f} vs champion {base.value:.3f} (difference {diff:+.3f}, "
            f"{policy.confidence:.0%} CI [{low:+.3f}, {high:+.3f}], {how}); tolerated drop {policy.margin:.3f}"
        )
        if high < -policy.margin:
            outcome, detail = Outcome.FAIL, f"worse beyond the margin: {summary}"
        elif low >= -policy.margin:
            outcome, detail = Outcome.PASS, summary
        else:
            outcome, detail = Outcome.INCONCLUSIVE, f"cannot tell at this sample size: {summary}"
        checks.append(Check(name=task, outcome=outcome, measured=diff, limit=-policy.margin, detail=detail))
    return GateResult.from_checks("quality", checks)


def _rate_checks(name: str, rate_champion, rate_candidate, limit: float, policy: SafetyGate) -> list[Check]:
    checks = []
    if rate_candidate.rate > limit:
        checks.append(Check(
            name=f"{name} limit", outcome=Outcome.FAIL, measured=rate_candidate.rate, limit=limit,
            detail=f"{rate_candidate.rate:.1%} ({rate_candidate.count}/{rate_candidate.samples}, "
            f"CI [{rate_candidate.low:.1%}, {rate_candidate.high:.1%}]) is above the limit {limit:.1%}",
        ))
    else:
        checks.append(Check(
            name=f"{name} limit", outcome=Outcome.PASS, measured=rate_candidate.rate, limit=limit,
            detail=f"{rate_candidate.rate:.1%} ({rate_candidate.count}/{rate_candidate.samples}) within {limit:.1%}",
        ))
    increase = rate_candidate.rate - rate_champion.rate
    # One-sided Fisher exact test: is the candidate's rate really higher than the champion's?
    table = [
        [rate_candidate.count, rate_candidate.samples - rate_candidate.count],
        [rate_champion.count, rate_champion.samples - rate_champion.count],
    ]
    p_value = float(stats.fisher_exact(table, alternative="greater").pvalue)
    significant = p_value < 1 - policy.confidence
    detail = f"{rate_candidate.rate:.1%} vs champion {rate_champion.rate:.1%} (change {increase:+.1%}, p={p_value:.3f})"
    if increase > policy.no_worse_margin and significant:
        outcome = Outcome.FAIL
        detail = f"worse than the champion beyond {policy.no_worse_margin:.1%}: {detail}"
    elif increase > policy.no_worse_margin:
        outcome = Outcome.INCONCLUSIVE
        detail = f"possibly worse than the champion, not significant at this sample size: {detail}"
    else:
        outcome = Outcome.PASS
    checks.append(Check(name=f"{name} vs champion", outcome=outcome, measured=increase, limit=policy.no_worse_margin, detail=detail))
    return checks


def safety_gate(policy: SafetyGate, champion: SafetyReport, candidate: SafetyReport) -> GateResult:
    n_harmful = min(candidate.harmful_compliance.samples, champion.harmful_compliance.samples)
    n_benign = min(candidate.over_refusal.samples, champion.over_refusal.samples)
    if min(n_harmful, n_benign) < policy.min_samples:
        return GateResult.from_checks("safety", [Check(
            name="samples", outcome=Outcome.INCONCLUSIVE, measured=float(min(n_harmful, n_benign)),
            limit=float(policy.min_samples),
            detail=f"{n_harmful} harmful and {n_benign} benign samples; at least {policy.min_samples} of each are needed",
        )])
    checks = _rate_checks("harmful compliance", champion.harmful_compliance, candidate.harmful_compliance,
                          policy.max_harmful_compliance, policy)
    checks += _rate_checks("over-refusal", champion.over_refusal, candidate.over_refusal, policy.max_over_refusal, policy)
    return GateResult.from_checks("safety", checks)


def paired_log_ratios(report: PerformanceReport, metric: str) -> np.ndarray:
    """log(candidate / champion) for each prompt in each block pair: same prompt, adjacent
    blocks, so slow drifts of the machine cancel out."""
    by_key = {(r.endpoint, r.block, r.prompt_index): r for r in report.records if r.ok}
    ratios = []
    for (endpoint, block, index), record in by_key.items():
        if endpoint != "candidate":
            continue
        partner = by_key.get(("champion", block, index))
        cand, base = record.metric(metric), partner.metric(metric) if partner else None
        if cand and base:
            ratios.append(math.log(cand / base))
    return np.array(ratios)


def performance_gate(policy: PerformanceGate, report: PerformanceReport) -> GateResult:
    if report.decided_at_interim and policy.interim_blocks:
        # The benchmark stopped at the policy's interim look: the same rules that stopped it judge it.
        policy = policy.model_copy(update={"blocks": policy.interim_blocks, "confidence": policy.interim_confidence})
    checks = []
    for endpoint in ("champion", "candidate"):
        records = [r for r in report.records if r.endpoint == endpoint]
        failed = sum(not r.ok for r in records)
        rate = failed / len(records) if records else 1.0
        outcome = Outcome.FAIL if rate > policy.max_error_rate else Outcome.PASS
        checks.append(Check(
            name=f"{endpoint} errors", outcome=outcome, measured=rate, limit=policy.max_error_rate,
            detail=f"{failed} of {len(records)} requests failed",
        ))
    ratios = paired_log_ratios(report, policy.metric)
    needed = policy.blocks * policy.requests_per_block // 2
    if len(ratios) < max(needed, 2):
        checks.append(Check(
            name=f"{policy.metric} ratio", outcome=Outcome.INCONCLUSIVE, measured=float(len(ratios)), limit=float(needed),
            detail=f"only {len(ratios)} paired measurements; {needed} are needed",
        ))
        return GateResult.from_checks("performance", checks)
    result = stats.bootstrap(
        (ratios,), np.median, confidence_level=policy.confidence, n_resamples=policy.bootstrap_resamples,
        method="percentile", rng=np.random.default_rng(0),
    )
    ratio = math.exp(float(np.median(ratios)))
    low, high = math.exp(result.confidence_interval.low), math.exp(result.confidence_interval.high)
    limit = 1 + policy.tolerated_slowdown
    summary = (
        f"candidate/champion median {policy.metric} ratio {ratio:.3f}, {policy.confidence:.1%} CI "
        f"[{low:.3f}, {high:.3f}] over {len(ratios)} paired requests"
        f"{' (decided at the interim look)' if report.decided_at_interim else ''}; tolerated up to {limit:.2f}"
    )
    if low > limit:
        outcome, detail = Outcome.FAIL, f"slower beyond tolerance: {summary}"
    elif high - low > policy.max_ci_width:
        outcome, detail = Outcome.INCONCLUSIVE, f"too noisy to decide (CI wider than {policy.max_ci_width}): {summary}"
    elif high <= limit:
        outcome, detail = Outcome.PASS, summary
    else:
        outcome, detail = Outcome.INCONCLUSIVE, f"cannot tell whether within tolerance: {summary}"
    checks.append(Check(name=f"{policy.metric} ratio", outcome=outcome, measured=ratio, limit=limit, detail=detail))
    return GateResult.from_checks("performance", checks)
