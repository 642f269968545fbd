"""The evaluation datasets shipped in evals/data, and which lm-eval task reads which."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
TASKS_DIR = Path(__file__).resolve().parent / "tasks"

# lm-eval task -> dataset file stem. The task YAMLs load these through tasks/fledge_data.py.
TASK_DATASETS = {
    "fledge_capitals": "capitals",
    "fledge_arithmetic": "arithmetic",
    "fledge_safety_harmful": "safety",
    "fledge_safety_benign": "safety",
}
SAFETY_TASKS = ("fledge_safety_harmful", "fledge_safety_benign")
# The datasets of task questions with known answers: benchmark prompts, agreement prompts and
# the earlier turns of synthetic conversations are drawn from them.
QUESTION_DATASETS = ("capitals", "arithmetic")


def data_dir() -> Path:
    """The shipped datasets, or a team's own copy named by FLEDGE_EVAL_DATA_DIR."""
    return Path(os.environ.get("FLEDGE_EVAL_DATA_DIR") or DATA_DIR)


def dataset_path(name: str) -> Path:
    return data_dir() / f"{name}.jsonl"


def dataset_sha256(name: str) -> str:
    return hashlib.sha256(dataset_path(name).read_bytes()).hexdigest()


def datasets_for_tasks(tasks: list[str]) -> list[str]:
    unknown = [t for t in tasks if t not in TASK_DATASETS]
    if unknown:
        raise ValueError(
            f"unknown evaluation task(s) {', '.join(unknown)}; shipped tasks: {', '.join(sorted(TASK_DATASETS))}"
        )
    return sorted({TASK_DATASETS[t] for t in tasks})


def read_prompts(names: list[str]) -> list[str]:
    """Completion prompts in the served format, from the question column of datasets."""
    import json

    prompts = []
    for name in names:
        for line in dataset_path(name).read_text().splitlines():
            row = json.loads(line)
            prompts.append(f"Q: {row.get('question') or row['prompt']}\nA:")
    return prompts
