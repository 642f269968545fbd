"""Whether a version fails too many requests: the one rule the canary analysis and the
post-promotion watch both judge errors by.

A rate is judged against the policy's limit and against the reference's rate (the baseline
in a canary, the previous champion in a watch), each by an exact one-sided test:
- FAIL when the rate is confidently above the limit (binomial test against the limit) or
  confidently above the reference's (Fisher's exact test);
- INCONCLUSIVE when the point estimate is above the limit but not yet confidently so, or
  (where a `ruled_out` rate is given) while that rate cannot yet be ruled out: it needs more
  requests, and is never a pass. The old rule passed a canary failing 10 % of requests at
  4/40, because the Wilson lower bound had to clear the limit before anything else counted;
  with 30 requests a step, one failure in 30 does not tell 2 % from 10 %;
- PASS otherwise.
"""

from __future__ import annotations

from scipy import stats

from fledge.core.outcome import Check, Outcome


def excess_rate_check(name: str, count: int, total: int, reference_count: int, reference_total: int,
                      limit: float, level: float, ruled_out: float | None = None, pass_level: float | None = None,
                      what: str = "failed") -> Check:
    """`count` of `total` requests went wrong; the reference had `reference_count` of
    `reference_total`. `level` is the look's significance level for failing; a pass needs
    `ruled_out` (if given) excluded at `pass_level` (default `level`)."""
    rate = count / total
    above_limit = float(stats.binomtest(count, total, limit, alternative="greater").pvalue) if limit < 1 else 1.0
    above_reference = 1.0
    if reference_total:
        table = [[count, total - count], [reference_count, reference_total - reference_count]]
        above_reference = float(stats.fisher_exact(table, alternative="greater").pvalue)
    reference = (f"; the reference {what} {reference_count}/{reference_total} (Fisher p={above_reference:.3g})"
                 if reference_total else "")
    detail = (f"{count}/{total} {what} ({rate:.1%}; limit {limit:.1%}, binomial p={above_limit:.3g}{reference}; "
              f"confident at p < {level:.3g})")
    below_ruled_out = 0.0
    if ruled_out is not None:
        below_ruled_out = float(stats.binomtest(count, total, ruled_out, alternative="less").pvalue)
    if above_limit < level:
        outcome, detail = Outcome.FAIL, "confidently above the limit: " + detail
    elif above_reference < level:
        outcome, detail = Outcome.FAIL, "confidently above the reference: " + detail
    elif rate > limit:
        outcome, detail = Outcome.INCONCLUSIVE, "above the limit, not yet confidently (more requests decide): " + detail
    elif ruled_out is not None and below_ruled_out >= (level if pass_level is None else pass_level):
        outcome = Outcome.INCONCLUSIVE
        detail = (f"a rate of {ruled_out:.0%} is not ruled out yet (binomial p={below_ruled_out:.3g}; more requests "
                  f"decide): " + detail)
    else:
        outcome = Outcome.PASS
    return Check(name=name, outcome=outcome, measured=rate, limit=limit, detail=detail)


def more_often_check(name: str, what: str, candidate: tuple[int, int], reference: tuple[int, int], margin: float,
                     level: float, labels: tuple[str, str] = ("canary", "stable")) -> Check | None:
    """Fails when the candidate's share (count, total) is confidently above the reference's
    (Fisher's exact test) by more than `margin`: refusals, cancellations. None when there is
    nothing to compare (no request, or none of this kind by the candidate)."""
    (count, total), (reference_count, reference_total) = candidate, reference
    if not total or not reference_total or not count:
        return None
    rate, reference_rate = count / total, reference_count / reference_total
    table = [[count, total - count], [reference_count, reference_total - reference_count]]
    p_value = float(stats.fisher_exact(table, alternative="greater").pvalue)
    failing = p_value < level and rate - reference_rate > margin
    return Check(
        name=name, outcome=Outcome.FAIL if failing else Outcome.PASS, measured=rate, limit=reference_rate + margin,
        detail=f"{count}/{total} {what} by the {labels[0]} vs {reference_count}/{reference_total} by {labels[1]} "
        f"(Fisher p={p_value:.3g})",
    )
