"""The expensive steps of a release, cached by what determines their result: a release that
crashed and is run again reuses every evaluation it had finished instead of starting over.

The cache key names the Fledge home, both versions with their manifest digests (same name and
number with other files is another model), the hash of the policy sections the result depends
on, the suite and the evaluation data's digests: change any of them and the step runs again.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from prefect import task
from prefect.context import TaskRunContext
from pydantic import BaseModel, ConfigDict

from evals.datasets import QUESTION_DATASETS, SAFETY_TASKS, dataset_sha256, datasets_for_tasks
from evals.endpoint import Endpoint
from fledge.core.outcome import Outcome
from fledge.core.policy import ReleasePolicy
from fledge.core.tags import TAG_MANIFEST
from fledge.services.evaluate import EvaluationResult, evaluate
from fledge.services.plane import fleet_for, serve_version
from tasks.common import say, workspace

CACHE_FOR = timedelta(days=30)


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _version_identity(ref: str) -> dict[str, str]:
    version = workspace().registry.resolve(ref)
    return {"ref": version.ref, "manifest": version.tags.get(TAG_MANIFEST, "")}


def _suite_datasets(suite: str, tasks: list[str]) -> list[str]:
    if suite == "quality":
        return datasets_for_tasks(tasks)
    if suite == "safety":
        return datasets_for_tasks(list(SAFETY_TASKS))
    return sorted(QUESTION_DATASETS)


def evaluation_cache_key(context: TaskRunContext, parameters: dict) -> str:
    policy: ReleasePolicy = parameters["policy"]
    suite = parameters["suite"]
    return "fledge-eval-" + _digest({
        "home": workspace().home.instance_id,
        "candidate": _version_identity(parameters["candidate_ref"]),
        "champion": _version_identity(parameters["champion_ref"]),
        "suite": suite,
        "policy": policy.evaluation_hash,
        "data": {n: dataset_sha256(n) for n in _suite_datasets(suite, list(policy.quality.tasks))},
    })


@task(name="evaluate suite", cache_key_fn=evaluation_cache_key, cache_expiration=CACHE_FOR, persist_result=True,
      task_run_name="evaluate {suite}: {candidate_ref} vs {champion_ref}")
def evaluate_suite(candidate_ref: str, champion_ref: str, suite: str, policy: ReleasePolicy,
                   release_run_id: str) -> EvaluationResult:
    """One suite against the champion, both served: the candidate on the instance that will
    take the canary's traffic, the champion on its baseline instance (not on the instance
    serving users, whose load would bias the comparison)."""
    log, ws = say(), workspace()
    fleet = fleet_for(ws.home)
    # A LoRA adapter is judged against its base on the same server (the one it would take
    # traffic on): no baseline instance, no new server.
    on_baseline = not ws.registry.resolve(candidate_ref).adapter_base
    where = f"a baseline instance of {champion_ref}" if on_baseline else f"{champion_ref} on the same server"
    log(f"{suite} suite: {candidate_ref} against {where} (each started if not running: about a minute)")
    with ThreadPoolExecutor(2) as pool:  # two cold starts at once: ~1.5 minutes instead of 2
        starting_candidate = pool.submit(serve_version, ws.registry, ws.home, policy.serving, candidate_ref, fleet)
        starting_champion = pool.submit(serve_version, ws.registry, ws.home, policy.serving, champion_ref, fleet,
                                        on_baseline)
        (candidate, _), (champion, _) = starting_candidate.result(), starting_champion.result()
    served = {"candidate": Endpoint(candidate.base_url, candidate.served_model_name),
              "champion": Endpoint(champion.base_url, champion.served_model_name)}
    result = evaluate(candidate_ref, champion_ref, (suite,), policy, ws, served=served, parent_run_id=release_run_id,
                      log=log)
    gate = result.verdict.gates[0] if result.verdict.gates else None
    log(f"{suite}: {result.verdict.outcome.value.upper()}" + (f" ({'; '.join(gate.reasons)})" if gate and gate.reasons else ""))
    return result


class QuantizationStep(BaseModel):
    """The version a release goes on with, and whether the quantization gate let it."""

    model_config = ConfigDict(extra="forbid")

    ref: str
    outcome: Outcome
    reasons: list[str] = []
    gate_run_id: str | None = None


def quantization_cache_key(context: TaskRunContext, parameters: dict) -> str:
    policy: ReleasePolicy = parameters["policy"]
    return "fledge-quant-" + _digest({
        "home": workspace().home.instance_id, "source": _version_identity(parameters["ref"]),
        "policy": policy.sections_hash("serving", "quality", "quantization"),
    })


@task(name="quantize", cache_key_fn=quantization_cache_key, cache_expiration=CACHE_FOR, persist_result=True)
def quantize_candidate(ref: str, policy: ReleasePolicy) -> QuantizationStep:
    """The version to release: `ref` itself when the policy says `none`, else its quantized
    version, gated against it (agreement and quality)."""
    from fledge.services.quantization import gate_quantized, quantize_version

    log, ws = say(), workspace()
    scheme = policy.quantization.scheme
    if ws.registry.resolve(ref).adapter_base:
        log("Quantization: skipped, the candidate is a LoRA adapter (quantization applies to full models; the "
            "adapter runs on its base as served)")
        return QuantizationStep(ref=ref, outcome=Outcome.PASS,
                                reasons=["a LoRA adapter is released as trained: quantization applies to full models"])
    if scheme == "none":
        log("Quantization: the policy says none; the candidate is released as registered")
        return QuantizationStep(ref=ref, outcome=Outcome.PASS)
    quantized = quantize_version(ref, scheme, ws, log=log)
    gate = gate_quantized(quantized, policy, ws, log=log)
    log(f"Quantized {ref} -> {quantized.version.ref}: gate {gate.outcome.value.upper()}")
    return QuantizationStep(ref=quantized.version.ref, outcome=gate.outcome,
                            reasons=[r for g in gate.gates for r in g.reasons], gate_run_id=gate.run_id)
