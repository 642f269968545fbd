"""Run shipped lm-eval tasks against an OpenAI-compatible endpoint (lm-eval's Python API).

The `local-completions` backend sends token ids to `/v1/completions` and scores multiple
choice with `echo` + `logprobs`; the tokenizer is the server's own (`/tokenize`), so what is
measured is exactly the model as served. Everything runs offline: tasks and data are local.
"""

from __future__ import annotations

import logging
import os
from importlib import metadata

from evals.datasets import TASKS_DIR
from evals.endpoint import Endpoint

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
QUIET = {"TQDM_DISABLE": "1"}  # lm-eval's per-request progress bars drown the operator's log


def lm_eval_version() -> str:
    return metadata.version("lm_eval")


def run_tasks(endpoint: Endpoint, tasks: list[str], *, max_length: int = 256, seed: int = 1234) -> dict:
    """lm-eval's results dict (with per-sample logs) for `tasks` against `endpoint`."""
    os.environ.update(OFFLINE)
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    import datasets

    datasets.disable_progress_bars()
    # lm-eval warns about custom datasets on every task load; its errors still show.
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    return simple_evaluate(
        model="local-completions",
        model_args={
            "model": endpoint.model,
            "base_url": endpoint.completions_url,
            "tokenizer_backend": "remote",
            "tokenized_requests": True,
            "add_bos_token": True,  # the zoo (like Llama) expects BOS; the server's /tokenize omits it
            "max_length": max_length,
            "num_concurrent": 2,
            "max_retries": 3,
            "timeout": 120,
        },
        tasks=tasks,
        task_manager=manager,
        log_samples=True,
        bootstrap_iters=1000,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
