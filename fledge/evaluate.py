"""Evaluate a candidate against the champion, both as served: the wiring behind `fledge eval`
and the release flow's evaluation step. Decisions live in `evals.verdict`; this module only
materializes, validates, serves, measures, logs and cleans up."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from evals.datasets import SAFETY_TASKS, dataset_sha256, datasets_for_tasks, read_prompts
from evals.endpoint import Endpoint
from evals.lm_eval_runner import lm_eval_version
from evals.validation import DatasetValidationError, ValidationOutcome, validate_datasets
from evals.verdict import ReleaseVerdict, SuiteReports, release_verdict
from fledge.context import local_launcher, open_registry
from fledge.home import FledgeHome
from fledge.policy import ReleasePolicy
from registry.errors import RegistryError
from registry.store import ModelRegistry, VersionInfo
from serving.config import ServerConfig
from serving.errors import LaunchError
from serving.launcher import ServerHandle

Log = Callable[[str], None]


@dataclass
class EvaluationResult:
    verdict: ReleaseVerdict
    run_id: str
    champion: SuiteReports
    candidate: SuiteReports
    seconds: float


def server_config(policy: ReleasePolicy, model_dir: Path, served_name: str, cores: str | None) -> ServerConfig:
    return ServerConfig(
        model_dir=model_dir,
        served_model_name=served_name,
        dtype=policy.serving.dtype,
        max_model_len=policy.serving.max_model_len,
        kv_cache_gib=policy.serving.kv_cache_gib,
        startup_timeout_s=policy.serving.startup_timeout_seconds,
        cpu_cores=cores,
    )


def core_plan(n_servers: int) -> list[str | None]:
    """One core per server when the machine has enough; otherwise let them share."""
    cores = os.cpu_count() or 1
    return [str(i) for i in range(n_servers)] if cores >= n_servers else [None] * n_servers


def _tasks_for(suites: tuple[str, ...], policy: ReleasePolicy) -> list[str]:
    tasks = list(policy.quality.tasks) if "quality" in suites else []
    return tasks + (list(SAFETY_TASKS) if "safety" in suites else [])


def _token_counter(model_dir: Path) -> Callable[[str], int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return lambda text: len(tokenizer(text)["input_ids"])


def _all_errors(ref: str, suites, message: str) -> SuiteReports:
    return SuiteReports(model_ref=ref, errors={s: message for s in suites})


def evaluate(
    candidate_ref: str,
    champion_ref: str,
    suites: tuple[str, ...],
    policy: ReleasePolicy,
    home: FledgeHome | None = None,
    log: Log = print,
    registry: ModelRegistry | None = None,
) -> EvaluationResult:
    from serving.engine import supported_architectures

    started = time.monotonic()
    home = (home or FledgeHome.from_env()).ensure()
    registry = registry or open_registry(home)
    candidate, champion = registry.resolve(candidate_ref), registry.resolve(champion_ref)
    datasets = datasets_for_tasks(_tasks_for(suites, policy)) + (["capitals", "arithmetic"] if "performance" in suites else [])
    datasets = sorted(set(datasets))
    from evals.tracking import log_evaluation, start_run

    run_id = start_run(
        registry.client, f"eval-{candidate.ref}-vs-{champion.ref}", home.artifacts,
        {"fledge.candidate": candidate.ref, "fledge.champion": champion.ref, "fledge.kind": "evaluation"},
    )
    for key, value in {
        "candidate": candidate.ref, "champion": champion.ref, "suites": ",".join(suites),
        "policy_hash": policy.content_hash, "lm_eval_version": lm_eval_version(),
        **{f"dataset_sha256.{name}": dataset_sha256(name) for name in datasets},
    }.items():
        registry.client.log_param(run_id, key, value)

    champion_reports = SuiteReports(model_ref=champion.ref)
    candidate_reports = SuiteReports(model_ref=candidate.ref)
    raw_outputs: dict[str, dict] = {}
    validations: list[ValidationOutcome] = []
    servers = ExitStack()  # every server started is stopped, whatever happens after
    try:
        archs = supported_architectures()
        dirs = {}
        for role, version in (("champion", champion), ("candidate", candidate)):
            try:
                dirs[role] = registry.materialize(version.ref, home.checkpoints, archs)
            except RegistryError as error:
                log(f"{role} {version.ref} cannot be served: {error}")
                message = f"not served: {error}"
                failed = _all_errors(version.ref, suites, message)
                champion_reports = failed if role == "champion" else champion_reports
                candidate_reports = failed if role == "candidate" else candidate_reports
        if len(dirs) == 2:
            max_new = max(policy.safety.max_new_tokens, policy.performance.max_tokens)
            try:
                validations = validate_datasets(
                    datasets, policy.serving.max_model_len - max_new, _token_counter(dirs["candidate"])
                )
                log(f"Evaluation data valid ({', '.join(datasets)})")
            except DatasetValidationError as error:
                validations = error.outcomes
                log(str(error))
                champion_reports = _all_errors(champion.ref, suites, str(error))
                candidate_reports = _all_errors(candidate.ref, suites, str(error))
            else:
                champion_reports, candidate_reports, raw_outputs = _serve_and_measure(
                    policy, suites, champion, candidate, dirs, home, log, servers
                )
                servers.close()
        verdict = release_verdict(policy, champion_reports, candidate_reports, suites)
        log_evaluation(registry.client, run_id, verdict, champion_reports, candidate_reports, raw_outputs,
                       validations, policy.performance.metric)
        registry.set_tags(candidate.name, candidate.version, {
            "fledge.eval.run_id": run_id, "fledge.eval.verdict": verdict.outcome.value,
            "fledge.eval.champion": champion.ref,
        })
        registry.client.set_terminated(run_id, "FINISHED")
    except BaseException:
        registry.client.set_terminated(run_id, "FAILED")
        raise
    finally:
        servers.close()
    return EvaluationResult(verdict, run_id, champion_reports, candidate_reports, time.monotonic() - started)


def _serve_and_measure(policy, suites, champion: VersionInfo, candidate: VersionInfo, dirs, home, log, servers: ExitStack):
    from evals.perf import run_benchmark
    from evals.quality import run_quality
    from evals.safety import run_safety

    launcher = local_launcher(home)
    cores = core_plan(2)
    configs = {
        "champion": server_config(policy, dirs["champion"], champion.ref, cores[0]),
        "candidate": server_config(policy, dirs["candidate"], candidate.ref, cores[1]),
    }
    log(f"Starting vLLM for {champion.ref} and {candidate.ref} (about a minute)")
    handles: dict[str, ServerHandle] = {}
    errors: dict[str, str] = {}
    with ThreadPoolExecutor(2) as pool:
        futures = {role: pool.submit(launcher.start, config) for role, config in configs.items()}
        for role, future in futures.items():
            try:
                handles[role] = future.result()
                servers.callback(handles[role].stop)
            except LaunchError as error:
                errors[role] = str(error)
    reports = {role: SuiteReports(model_ref=v.ref) for role, v in (("champion", champion), ("candidate", candidate))}
    raw: dict[str, dict] = {}
    for role, message in errors.items():
        reports[role] = _all_errors(reports[role].model_ref, suites, f"vLLM did not start: {message}")
    if errors:
        return reports["champion"], reports["candidate"], raw

    endpoints = {role: Endpoint(h.base_url, h.config.served_model_name) for role, h in handles.items()}
    for role in ("champion", "candidate"):
        endpoint = endpoints[role]
        updates = {}
        if "quality" in suites:
            log(f"Quality suite on {endpoint.model} ({', '.join(policy.quality.tasks)})")
            try:
                updates["quality"], raw[f"quality_{role}"] = run_quality(endpoint, list(policy.quality.tasks))
            except Exception as error:  # an evaluation crash is an ERROR verdict, not a crashed release
                updates["errors"] = {**updates.get("errors", {}), "quality": f"{type(error).__name__}: {error}"}
        if "safety" in suites:
            log(f"Safety suite on {endpoint.model}")
            try:
                updates["safety"], raw[f"safety_{role}"] = run_safety(endpoint, policy.safety.confidence)
            except Exception as error:
                updates["errors"] = {**updates.get("errors", {}), "safety": f"{type(error).__name__}: {error}"}
        reports[role] = reports[role].model_copy(update=updates)
    if "performance" in suites:
        log(f"Performance benchmark: {policy.performance.blocks} alternating blocks of {policy.performance.requests_per_block} requests")
        try:
            report = run_benchmark(endpoints["champion"], endpoints["candidate"], read_prompts(["arithmetic", "capitals"]), policy.performance, log)
            reports["candidate"] = reports["candidate"].model_copy(update={"performance": report})
        except Exception as error:
            errors_now = {**reports["candidate"].errors, "performance": f"{type(error).__name__}: {error}"}
            reports["candidate"] = reports["candidate"].model_copy(update={"errors": errors_now})
    return reports["champion"], reports["candidate"], raw
