"""Where the GPU-heavy steps run. With a GPU work pool configured (FLEDGE_GPU_WORK_POOL, e.g.
`gpu`), quantization and evaluations are started as runs of their deployments on that pool
with `run_deployment`, and the release waits for their results; otherwise they run here, in
the release's own process. Either way the same tasks run, with the same cache keys, and the
policy travels as content (a flow parameter Prefect validates back into the typed object),
never as a path a worker on another host would not have.
"""

from __future__ import annotations

import os

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment

from fledge.core.errors import TransientError
from fledge.core.policy import ReleasePolicy
from fledge.services.evaluate import EvaluationResult
from tasks.evaluation_steps import QuantizationStep, evaluate_suite, quantize_candidate

GPU_POOL_ENV = "FLEDGE_GPU_WORK_POOL"
EVALUATE_FLOW, QUANTIZE_FLOW = "evaluate-suite", "quantize-version"


@flow(name=EVALUATE_FLOW)
def evaluate_suite_flow(candidate_ref: str, champion_ref: str, suite: str, policy: ReleasePolicy,
                        release_run_id: str) -> tuple[EvaluationResult, bool]:
    state = evaluate_suite(candidate_ref, champion_ref, suite, policy, release_run_id, return_state=True)
    return state.result(), state.name == "Cached"


@flow(name=QUANTIZE_FLOW)
def quantize_flow(ref: str, policy: ReleasePolicy) -> QuantizationStep:
    return quantize_candidate(ref, policy)


def gpu_pool() -> str | None:
    return os.environ.get(GPU_POOL_ENV) or None


class DispatchFailed(TransientError):
    """A step dispatched to the GPU pool did not complete; running the release again retries it."""


def _on_gpu(flow_name: str, parameters: dict):
    deployment = f"{flow_name}/{gpu_pool()}"
    get_run_logger().info(f"Dispatching {flow_name} to the {gpu_pool()} work pool ({deployment})")
    run = run_deployment(deployment, parameters=parameters, timeout=None)
    if not run.state.is_completed():
        raise DispatchFailed(f"{deployment} run {run.id} ended {run.state.name}: {run.state.message}")
    return run.state.result()


def evaluate_suites(candidate_ref: str, champion_ref: str, suite: str, policy: ReleasePolicy,
                    release_run_id: str) -> tuple[EvaluationResult, bool]:
    """The suite's result and whether it came from the cache."""
    if gpu_pool():
        return _on_gpu(EVALUATE_FLOW, dict(candidate_ref=candidate_ref, champion_ref=champion_ref, suite=suite,
                                           policy=policy.model_dump(mode="json"), release_run_id=release_run_id))
    state = evaluate_suite(candidate_ref, champion_ref, suite, policy, release_run_id, return_state=True)
    return state.result(), state.name == "Cached"


def quantize(ref: str, policy: ReleasePolicy) -> QuantizationStep:
    if gpu_pool():
        return _on_gpu(QUANTIZE_FLOW, dict(ref=ref, policy=policy.model_dump(mode="json")))
    return quantize_candidate(ref, policy)
