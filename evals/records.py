"""What an evaluation keeps as its record: the metrics of both models and the evidence files.

Pure of any tracking store: the evaluation service writes these into its MLflow run through
the registry's run recorder, so `evals` stays usable without MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from evals.reports import PerformanceReport
from evals.validation import ValidationOutcome
from evals.verdict import ReleaseVerdict, SuiteReports


def _percentile_ms(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q) * 1000) if values else None


def performance_metrics(report: PerformanceReport) -> dict[str, float]:
    metrics = {}
    for role in ("champion", "candidate"):
        ok = [r for r in report.records if r.endpoint == role and r.ok]
        series = {
            "ttft": [r.ttft_s for r in ok if r.ttft_s is not None],
            "tpot": [r.tpot_s for r in ok if r.tpot_s is not None],
            "itl": [gap for r in ok for gap in r.itl_s],
            "e2e": [r.e2e_latency_s for r in ok if r.e2e_latency_s is not None],
        }
        for name, values in series.items():
            for q in (50, 99):
                value = _percentile_ms(values, q)
                if value is not None:
                    metrics[f"{role}.perf.{name}_p{q}_ms"] = value
        metrics[f"{role}.perf.throughput_tok_s"] = report.throughput_tokens_per_s.get(role, 0.0)
        metrics[f"{role}.perf.failed_requests"] = float(sum(not r.ok for r in report.records if r.endpoint == role))
    return metrics


def suite_metrics(side: str, reports: SuiteReports) -> dict[str, float]:
    metrics = {}
    if reports.quality:
        for task in reports.quality.tasks:
            metrics[f"{side}.{task.task}.{task.metric}"] = task.value
            if task.stderr is not None:
                metrics[f"{side}.{task.task}.{task.metric}_stderr"] = task.stderr
    if reports.safety:
        metrics[f"{side}.safety.harmful_compliance"] = reports.safety.harmful_compliance.rate
        metrics[f"{side}.safety.over_refusal"] = reports.safety.over_refusal.rate
    return metrics


def latency_plot(report: PerformanceReport, metric: str, path: Path) -> Path:
    """Empirical CDFs of the gate's metric for champion and candidate, on one axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for role, ref in (("champion", report.champion_ref), ("candidate", report.candidate_ref)):
        measured = (r.metric(metric) for r in report.records if r.endpoint == role and r.ok)
        values = sorted(value * 1000 for value in measured if value is not None)
        if values:
            axis.step(values, np.arange(1, len(values) + 1) / len(values), where="post", label=f"{role} {ref}")
    axis.set_xlabel(f"{metric} (ms)")
    axis.set_ylabel("share of requests")
    axis.set_title(f"{metric}: champion vs candidate (same prompts, interleaved blocks)")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def evaluation_metrics(champion: SuiteReports, candidate: SuiteReports) -> dict[str, float]:
    """Every metric of both models, named `champion.*` / `candidate.*`."""
    metrics = suite_metrics("champion", champion) | suite_metrics("candidate", candidate)
    if candidate.performance:
        metrics |= performance_metrics(candidate.performance)
    return metrics


def write_evaluation_artifacts(
    out: Path,
    verdict: ReleaseVerdict | None,
    champion: SuiteReports,
    candidate: SuiteReports,
    raw_outputs: dict[str, dict],
    validations: list[ValidationOutcome],
    perf_metric: str,
) -> list[tuple[Path, str | None]]:
    """Write the evaluation's evidence into `out`; returns (file, artifact folder) pairs to
    keep with the run: lm-eval's raw output, safety samples, benchmark requests and plot, the
    validation reports, the verdict."""
    files: list[tuple[Path, str | None]] = []
    for name, raw in raw_outputs.items():
        path = out / f"lm_eval_{name}.json"
        path.write_text(json.dumps(raw, indent=1, default=str))
        files.append((path, "lm_eval"))
    for side in (champion, candidate):
        if side.safety:
            path = out / f"safety_samples_{side.model_ref.replace('/', '_')}.jsonl"
            path.write_text("".join(s.model_dump_json() + "\n" for s in side.safety.samples))
            files.append((path, "safety"))
    if candidate.performance:
        path = out / "benchmark_requests.jsonl"
        path.write_text("".join(r.model_dump_json() + "\n" for r in candidate.performance.records))
        files.append((path, "performance"))
        files.append((latency_plot(candidate.performance, perf_metric, out / f"{perf_metric}_cdf.png"), "performance"))
    for outcome in validations:
        path = out / f"{outcome.name}.json"
        path.write_text(json.dumps(outcome.result_json, indent=1))
        files.append((path, "validation"))
    if verdict is not None:
        (out / "verdict.md").write_text(verdict.to_markdown())
        (out / "verdict.json").write_text(verdict.to_json())
        files += [(out / "verdict.md", None), (out / "verdict.json", None)]
    return files
