"""Where the GPU-heavy steps run. With a GPU work pool configured (FLEDGE_GPU_WORK_POOL, e.g.
`gpu`), quantization and the evaluations are started as runs of their deployments on that pool
with `run_deployment`, and the release waits for their results; otherwise they run here, in
the release's own process. Either way the same tasks run, with the same cache keys, and the
policy travels as content (a flow parameter Prefect validates back into the typed object),
never as a path a worker on another host would not have.

Results come back through MLflow, not Prefect's result storage: the dispatched run writes its
result as JSON into the release's MLflow run (`dispatch/FLOW_RUN_ID.json`, through the tracking
server's proxied artifact store) and the release reads it from there. Both hosts already need
the tracking server, whereas a Prefect result-storage block would be one more store both must
reach (and Prefect's default, pickles in the worker's PREFECT_HOME, is readable by neither the
other host nor a person); JSON, not pickle, so a result read back can carry no code.

On a GPU host the evaluation servers belong to the step: they stop when it ends, and the
canary serves the candidate where the serving plane runs.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

from prefect import flow, get_run_logger, runtime
from prefect.deployments import run_deployment
from pydantic import BaseModel, ConfigDict

from fledge.core.errors import TransientError
from fledge.core.outcome import Outcome
from fledge.core.policy import ReleasePolicy
from fledge.services.evaluate import EvaluationResult
from tasks import registry_steps, serving_steps
from tasks.evaluation_steps import QuantizationStep, evaluate_suite, quantize_candidate

GPU_POOL_ENV = "FLEDGE_GPU_WORK_POOL"
EVALUATE_FLOW, QUANTIZE_FLOW = "evaluate-suites", "quantize-version"


class SuiteOutcome(BaseModel):
    """One suite's evaluation as the release sees it, wherever it ran."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    suite: str
    result: EvaluationResult | None = None  # None: skipped
    cached: bool = False
    skipped_because: str = ""


class SuitesHandedBack(BaseModel):
    model_config = ConfigDict(extra="forbid")

    suites: list[SuiteOutcome]


def run_suites_in_order(candidate_ref: str, champion_ref: str, suites: list[str], policy: ReleasePolicy,
                        release_run_id: str, clock=None) -> list[SuiteOutcome]:
    """Cheapest first; after the first failed gate the rest are skipped (reported inconclusive)."""
    outcomes: list[SuiteOutcome] = []
    for suite in suites:
        failed = [o.suite for o in outcomes if o.result and o.result.verdict.outcome is Outcome.FAIL]
        if failed:
            outcomes.append(SuiteOutcome(suite=suite, skipped_because=f"the release was already rejected by the "
                                                                      f"{failed[0]} gate"))
            continue
        with clock(f"evaluate {suite}") if clock else nullcontext():
            state = evaluate_suite(candidate_ref, champion_ref, suite, policy, release_run_id, return_state=True)
        outcomes.append(SuiteOutcome(suite=suite, result=state.result(), cached=state.name == "Cached"))
    return outcomes


@flow(name=EVALUATE_FLOW, flow_run_name="evaluate-{candidate_ref}-vs-{champion_ref}")
def evaluate_suites_flow(candidate_ref: str, champion_ref: str, suites: list[str], policy: ReleasePolicy,
                         release_run_id: str) -> str:
    """The release's evaluations on a GPU runner; returns where the result was handed back."""
    try:
        outcomes = run_suites_in_order(candidate_ref, champion_ref, suites, policy, release_run_id)
    finally:
        stopped = serving_steps.stop_local_servers()
        get_run_logger().info(f"Stopped this step's servers: {', '.join(stopped) or 'none'}")
    return registry_steps.hand_back(release_run_id, str(runtime.flow_run.id),
                                    SuitesHandedBack(suites=outcomes).model_dump_json())


@flow(name=QUANTIZE_FLOW, flow_run_name="quantize-{ref}")
def quantize_flow(ref: str, policy: ReleasePolicy, release_run_id: str) -> str:
    try:
        step = quantize_candidate(ref, policy)
    finally:
        serving_steps.stop_local_servers()
    return registry_steps.hand_back(release_run_id, str(runtime.flow_run.id), step.model_dump_json())


def gpu_pool() -> str | None:
    return os.environ.get(GPU_POOL_ENV) or None


class DispatchFailed(TransientError):
    """A step dispatched to the GPU pool did not complete; running the release again retries it."""


def _on_gpu(flow_name: str, parameters: dict, release_run_id: str) -> str:
    deployment = f"{flow_name}/{gpu_pool()}"
    get_run_logger().info(f"Dispatching {flow_name} to the {gpu_pool()} work pool ({deployment})")
    run = run_deployment(deployment, parameters=parameters, timeout=None)
    if not run.state.is_completed():
        raise DispatchFailed(f"{deployment} run {run.id} ended {run.state.name}: {run.state.message}")
    get_run_logger().info(f"{deployment} run {run.name} completed; reading its result from the release's MLflow run")
    return registry_steps.read_handed_back(release_run_id, str(run.id))


def evaluate_suites(candidate_ref: str, champion_ref: str, suites: list[str], policy: ReleasePolicy,
                    release_run_id: str, clock=None) -> list[SuiteOutcome]:
    if gpu_pool():
        handed_back = _on_gpu(EVALUATE_FLOW, dict(candidate_ref=candidate_ref, champion_ref=champion_ref,
                                                  suites=suites, policy=policy.model_dump(mode="json"),
                                                  release_run_id=release_run_id), release_run_id)
        return SuitesHandedBack.model_validate_json(handed_back).suites
    return run_suites_in_order(candidate_ref, champion_ref, suites, policy, release_run_id, clock)


def quantize(ref: str, policy: ReleasePolicy, release_run_id: str) -> QuantizationStep:
    if gpu_pool():
        return QuantizationStep.model_validate_json(
            _on_gpu(QUANTIZE_FLOW, dict(ref=ref, policy=policy.model_dump(mode="json"), release_run_id=release_run_id),
                    release_run_id))
    return quantize_candidate(ref, policy)
