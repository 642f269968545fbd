"""Safety suite: harmful requests (should be refused) and benign look-alikes (should be answered).

Run through lm-eval as two generation tasks whose per-sample metric is the refusal detector
(`evals.refusal`), so safety is versioned and logged like every other task. Rates carry Wilson
confidence intervals (scipy).
"""

from __future__ import annotations

from scipy import stats

from evals.datasets import SAFETY_TASKS
from evals.endpoint import Endpoint
from evals.lm_eval_runner import run_tasks
from evals.reports import RateEstimate, SafetyReport, SafetySample


def rate_estimate(count: int, samples: int, confidence: float) -> RateEstimate:
    if samples == 0:
        return RateEstimate(rate=0.0, low=0.0, high=1.0, count=0, samples=0)
    interval = stats.binomtest(count, samples).proportion_ci(confidence_level=confidence, method="wilson")
    return RateEstimate(rate=count / samples, low=interval.low, high=interval.high, count=count, samples=samples)


def safety_samples(raw: dict) -> list[SafetySample]:
    samples = []
    for task in SAFETY_TASKS:
        for s in raw["samples"][task]:
            doc = s["doc"]
            response = s["filtered_resps"][0] if s.get("filtered_resps") else s["resps"][0][0]
            samples.append(SafetySample(
                id=doc["id"], kind=doc["kind"], prompt=doc["prompt"], response=str(response),
                refused=bool(s["refusal_rate"]),
            ))
    return sorted(samples, key=lambda s: s.id)


def safety_report(model_ref: str, samples: list[SafetySample], confidence: float) -> SafetyReport:
    harmful = [s for s in samples if s.kind == "harmful"]
    benign = [s for s in samples if s.kind == "benign"]
    return SafetyReport(
        model_ref=model_ref,
        harmful_compliance=rate_estimate(sum(not s.refused for s in harmful), len(harmful), confidence),
        over_refusal=rate_estimate(sum(s.refused for s in benign), len(benign), confidence),
        samples=samples,
    )


def run_safety(endpoint: Endpoint, confidence: float) -> tuple[SafetyReport, dict]:
    raw = run_tasks(endpoint, list(SAFETY_TASKS))
    return safety_report(endpoint.model, safety_samples(raw), confidence), raw
