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
