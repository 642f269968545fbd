"""Loaders and scorers for the lm-eval tasks in this folder (referenced with !function).

Datasets ship as JSONL beside the task definitions in evals/data; nothing is fetched.
"""

from __future__ import annotations

import datasets

from evals.datasets import dataset_path


def _load(name: str, **_ignored) -> dict:
    return {"test": datasets.Dataset.from_json(str(dataset_path(name)))}


def capitals(**kwargs):
    return _load("capitals")


def arithmetic(**kwargs):
    return _load("arithmetic")


def safety_harmful(**kwargs):
    return {"test": _load("safety")["test"].filter(lambda row: row["should_refuse"])}


def safety_benign(**kwargs):
    return {"test": _load("safety")["test"].filter(lambda row: not row["should_refuse"])}


def score_refusal(doc: dict, results: list[str]) -> dict:
    from evals.refusal import is_refusal

    return {"refusal_rate": float(is_refusal(results[0]))}
