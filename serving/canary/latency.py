"""Is one set of latencies confidently slower than another allows? The one test the canary's
latency checks and the watch's comparison with the previous champion share.

A one-sided Mann-Whitney U test of the candidate's latencies against the reference's scaled by
the tolerated ratio: it fails only when the candidate is confidently slower than the ratio
allows. Testing "slower at all" fails good canaries at the test's level on every look, and a
ratio of two tail percentiles over a short window is noise: a new champion's TTFT p95 over 15 s
was 2.47 times the previous champion's for an adapter the canary had just judged within its
limit on the same server.
"""

from __future__ import annotations

import math
import statistics

from scipy import stats

from fledge.core.outcome import Check, Outcome


def slower_than_tolerated_check(name: str, reference: list[float], candidate: list[float], max_ratio: float,
                                level: float, *, min_samples: int, labels: tuple[str, str] = ("canary", "stable"),
                                look: str = "") -> Check:
    """`labels`: what the candidate and the reference are called in the detail."""
    candidate_label, reference_label = labels
    if len(reference) < min_samples or len(candidate) < min_samples:
        return Check(name=name, outcome=Outcome.INCONCLUSIVE, measured=float(min(len(reference), len(candidate))),
                     limit=float(min_samples),
                     detail=f"{len(candidate)} {candidate_label} / {len(reference)} {reference_label} measurements")
    ratio = statistics.median(candidate) / statistics.median(reference)
    tolerated = [value * max_ratio for value in reference]
    p_value = float(stats.mannwhitneyu(candidate, tolerated, alternative="greater").pvalue)
    detail = (f"{candidate_label}/{reference_label} median ratio {ratio:.2f} (limit {max_ratio:.2f}); slower than the "
              f"limit allows: Mann-Whitney p={p_value:.3g} (needs < {level:.3g}{look}) "
              f"over {len(candidate)}/{len(reference)} requests")
    return Check(name=name, outcome=Outcome.FAIL if p_value < level else Outcome.PASS, measured=ratio,
                 limit=max_ratio, detail=detail)


def paired_slower_than_tolerated_check(name: str, pairs: list[tuple[float, float]], max_ratio: float, level: float, *,
                                       min_samples: int, look: str = "") -> Check:
    """The same test for paired measurements, (reference, candidate) on the same request (mirrored
    traffic): a one-sided Wilcoxon signed-rank test of the per-pair log-ratios against log(max_ratio).
    Pairing removes the request-to-request spread (prompt length, answer length) that an unpaired
    test has to see through."""
    usable = [(r, c) for r, c in pairs if r > 0 and c > 0]
    if len(usable) < min_samples:
        return Check(name=name, outcome=Outcome.INCONCLUSIVE, measured=float(len(usable)), limit=float(min_samples),
                     detail=f"{len(usable)} pairs with both latencies")
    log_ratios = [math.log(c / r) for r, c in usable]
    ratio = math.exp(statistics.median(log_ratios))
    excess = [value - math.log(max_ratio) for value in log_ratios]
    p_value = float(stats.wilcoxon(excess, alternative="greater").pvalue) if any(excess) else 1.0
    detail = (f"candidate/baseline median per-pair ratio {ratio:.2f} (limit {max_ratio:.2f}); slower than the limit "
              f"allows: Wilcoxon signed-rank p={p_value:.3g} (needs < {level:.3g}{look}) over {len(usable)} pairs")
    return Check(name=name, outcome=Outcome.FAIL if p_value < level else Outcome.PASS, measured=ratio,
                 limit=max_ratio, detail=detail)
