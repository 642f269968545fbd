"""The expensive steps of a release, cached by what determines their result: a release that
crashed and is run again reuses every evaluation it had finished instead of starting over.

The cache key names the Fledge home, both versions with their manifest digests (same name and
number with other files is another model), the policy sections the result depends on, the
suite and the evaluation data's digests: change any of them and the step runs again.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from prefect import task
from prefect.context import TaskRunContext

from evals.datasets import SAFETY_TASKS, dataset_sha256, datasets_for_tasks
from evals.endpoint import Endpoint
from fledge.evaluate import EvaluationResult, evaluate
from fledge.plane import fleet_for, serve_version
from registry.status import TAG_MANIFEST
from tasks.common import home, policy, registry, say

CACHE_FOR = timedelta(days=30)


def _digest(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _version_identity(ref: str) -> dict[str, str]:
    version = registry().resolve(ref)
    return {"ref": version.ref, "manifest": version.tags.get(TAG_MANIFEST, "")}


def _suite_datasets(suite: str, tasks: list[str]) -> list[str]:
    if suite == "quality":
        return datasets_for_tasks(tasks)
    if suite == "safety":
        return datasets_for_tasks(list(SAFETY_TASKS))
    return ["arithmetic", "capitals"]


def evaluation_cache_key(context: TaskRunContext, parameters: dict) -> str:
    release_policy = policy(parameters["policy_path"])
    suite = parameters["suite"]
    return "fledge-eval-" + _digest({
        "home": home().instance_id,
        "candidate": _version_identity(parameters["candidate_ref"]),
        "champion": _version_identity(parameters["champion_ref"]),
        "suite": suite,
        "policy": release_policy.evaluation_hash,
        "data": {n: dataset_sha256(n) for n in _suite_datasets(suite, list(release_policy.quality.tasks))},
    })


@task(name="evaluate suite", cache_key_fn=evaluation_cache_key, cache_expiration=CACHE_FOR, persist_result=True,
      task_run_name="evaluate {suite}: {candidate_ref} vs {champion_ref}")
def evaluate_suite(candidate_ref: str, champion_ref: str, suite: str, policy_path: str | None,
                   release_run_id: str) -> EvaluationResult:
    """One suite against the champion, both served: the candidate on the instance that will
    take the canary's traffic, the champion on a staging copy (not on the instance serving
    users, whose load would bias the comparison)."""
    log = say()
    release_policy, store, fledge_home = policy(policy_path), registry(), home()
    fleet = fleet_for(fledge_home)
    log(f"{suite} suite: {candidate_ref} against a staging copy of {champion_ref} (each started if not running: about a minute)")
    with ThreadPoolExecutor(2) as pool:  # two cold starts at once: ~1.5 minutes instead of 2
        starting_candidate = pool.submit(serve_version, store, fledge_home, release_policy, candidate_ref, fleet)
        starting_champion = pool.submit(serve_version, store, fledge_home, release_policy, champion_ref, fleet, True)
        (candidate, _), (champion, _) = starting_candidate.result(), starting_champion.result()
    served = {"candidate": Endpoint(candidate.base_url, candidate.served_model_name),
              "champion": Endpoint(champion.base_url, champion.served_model_name)}
    result = evaluate(candidate_ref, champion_ref, (suite,), release_policy, fledge_home, log, store, served=served,
                      run_tags={"mlflow.parentRunId": release_run_id})
    gate = result.verdict.gates[0] if result.verdict.gates else None
    log(f"{suite}: {result.verdict.outcome.value.upper()}" + (f" ({'; '.join(gate.reasons)})" if gate and gate.reasons else ""))
    return result


def quantization_cache_key(context: TaskRunContext, parameters: dict) -> str:
    release_policy = policy(parameters["policy_path"])
    return "fledge-quant-" + _digest({
        "home": home().instance_id, "source": _version_identity(parameters["ref"]),
        "policy": release_policy.sections_hash("serving", "quality", "quantization"),
    })


@task(name="quantize", cache_key_fn=quantization_cache_key, cache_expiration=CACHE_FOR, persist_result=True)
def quantize_candidate(ref: str, policy_path: str | None) -> dict:
    """The version to release: `ref` itself when the policy says `none`, else its quantized
    version, gated against it (agreement and quality). Returns ref, outcome and reasons."""
    from fledge.quantization import gate_quantized, quantize_version

    release_policy, store, log = policy(policy_path), registry(), say()
    scheme = release_policy.quantization.scheme
    if scheme == "none":
        log("Quantization: the policy says none; the candidate is released as registered")
        return {"ref": ref, "outcome": "pass", "reasons": [], "run_id": None}
    quantized = quantize_version(ref, scheme, home(), store, log=log)
    gate = gate_quantized(quantized, release_policy, home(), store, log=log)
    reasons = [r for g in gate.gates for r in g.reasons]
    log(f"Quantized {ref} -> {quantized.version.ref}: gate {gate.outcome.value.upper()}")
    return {"ref": quantized.version.ref, "outcome": gate.outcome.value, "reasons": reasons, "run_id": gate.run_id}
