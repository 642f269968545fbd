"""Quality suite: shipped lm-eval tasks on the served endpoint, as a typed QualityReport."""

from __future__ import annotations

from evals.datasets import TASK_DATASETS, dataset_sha256
from evals.endpoint import Endpoint
from evals.lm_eval_runner import lm_eval_version, run_tasks
from evals.reports import QualityReport, TaskScore


def _metric_key(task_results: dict) -> tuple[str, str]:
    """('acc', 'none') from lm-eval's 'acc,none' keys: the task's one scored metric."""
    keys = [k for k in task_results if "," in k and "_stderr" not in k]
    if len(keys) != 1:
        raise ValueError(f"expected one metric in lm-eval results, found {keys}")
    metric, filter_name = keys[0].split(",", 1)
    return metric, filter_name


def task_scores(raw: dict, tasks: list[str]) -> list[TaskScore]:
    scores = []
    for task in tasks:
        results = raw["results"][task]
        metric, filter_name = _metric_key(results)
        stderr = results.get(f"{metric}_stderr,{filter_name}")
        samples = [s for s in raw["samples"][task] if s.get("filter", filter_name) == filter_name]
        scores.append(
            TaskScore(
                task=task,
                metric=metric,
                value=float(results[f"{metric},{filter_name}"]),
                stderr=float(stderr) if isinstance(stderr, (int, float)) else None,
                samples=int(raw["n-samples"][task]["effective"]),
                task_version=str(raw["versions"][task]),
                dataset_sha256=dataset_sha256(TASK_DATASETS[task]),
                per_sample={str(s["doc"].get("id", s["doc_id"])): float(s[metric]) for s in samples},
            )
        )
    return scores


def run_quality(endpoint: Endpoint, tasks: list[str]) -> tuple[QualityReport, dict]:
    """The typed report and lm-eval's raw output (kept as an artifact)."""
    raw = run_tasks(endpoint, tasks)
    report = QualityReport(model_ref=endpoint.model, tasks=task_scores(raw, tasks), lm_eval_version=lm_eval_version())
    return report, raw
