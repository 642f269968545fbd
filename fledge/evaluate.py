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
from evals.validation import DatasetValidationError, validate_datasets
from evals.verdict import ReleaseVerdict, SuiteReports, release_verdict
from fledge.outcome import Outcome
from fledge.context import local_launcher, open_registry
from fledge.home import FledgeHome
from fledge.policy import ReleasePolicy
from registry.errors import RegistryError
from registry.store import ModelRegistry, VersionInfo
from serving.config import ServerConfig
from serving.errors import LaunchError

Log = Callable[[str], None]


@dataclass
class EvaluationResult:
    verdict: ReleaseVerdict
    run_id: str
    champion: SuiteReports
    candidate: SuiteReports
    seconds: float


def served_context(policy: ReleasePolicy, model_dir: Path) -> int:
    """The policy's context length, capped at what the checkpoint supports: vLLM refuses to
    start when asked for more, and a model with a shorter window is served with its own."""
    import json

    config = json.loads((model_dir / "config.json").read_text())
    supported = config.get("max_position_embeddings") or policy.serving.max_model_len
    return min(policy.serving.max_model_len, int(supported))


def server_config(policy: ReleasePolicy, model_dir: Path, served_name: str, cores: str | None) -> ServerConfig:
    return ServerConfig(
        model_dir=model_dir,
        served_model_name=served_name,
        dtype=policy.serving.dtype,
        max_model_len=served_context(policy, model_dir),
        kv_cache_gib=policy.serving.kv_cache_gib,
        startup_timeout_s=policy.serving.startup_timeout_seconds,
        cpu_cores=cores,
    )


def core_plan(n_servers: int, comparing_speed: bool = False) -> list[str | None]:
    """One core per server when the machine has enough, so concurrent servers do not fight;
    but not when their speeds are compared: the measuring client and the OS then load one core
    more than the other, and on 2 cores that alone made an A/A comparison read 1.19. The
    benchmark sends to one server at a time, so sharing every core is fair to both."""
    cores = os.cpu_count() or 1
    if comparing_speed or cores < n_servers:
        return [None] * n_servers
    return [str(i) for i in range(n_servers)]


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
    served: dict[str, Endpoint] | None = None,
    run_tags: dict[str, str] | None = None,
) -> EvaluationResult:
    """`served` (role -> endpoint) uses servers the caller already runs, e.g. the release flow's
    staging instances; otherwise both versions are served here and stopped afterwards."""
    started = time.monotonic()
    home = (home or FledgeHome.from_env()).ensure()
    registry = registry or open_registry(home)
    candidate, champion = registry.resolve(candidate_ref), registry.resolve(champion_ref)
    datasets = datasets_for_tasks(_tasks_for(suites, policy)) + (["capitals", "arithmetic"] if "performance" in suites else [])
    datasets = sorted(set(datasets))
    from evals.tracking import log_evaluation, start_run

    run_id = start_run(
        registry.client, f"eval-{candidate.ref}-vs-{champion.ref}", home.artifacts,
        {"fledge.candidate": candidate.ref, "fledge.champion": champion.ref, "fledge.kind": "evaluation", **(run_tags or {})},
    )
    for key, value in {
        "candidate": candidate.ref, "champion": champion.ref, "suites": ",".join(suites),
        "policy_hash": policy.content_hash, "lm_eval_version": lm_eval_version(),
        **{f"dataset_sha256.{name}": dataset_sha256(name) for name in datasets},
    }.items():
        registry.client.log_param(run_id, key, value)

    versions = {"champion": champion, "candidate": candidate}
    servers = ExitStack()  # every server started is stopped, whatever happens after
    try:
        reports, raw_outputs, validations = _gather(policy, suites, versions, datasets, home, registry, log, served, servers)
        servers.close()
        verdict = release_verdict(policy, reports["champion"], reports["candidate"], suites)
        log_evaluation(registry.client, run_id, verdict, reports["champion"], reports["candidate"], raw_outputs,
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
    return EvaluationResult(verdict, run_id, reports["champion"], reports["candidate"], time.monotonic() - started)


def _with_errors(versions: dict[str, VersionInfo], suites, problems: dict[str, str]) -> dict[str, SuiteReports]:
    """Reports for a stop before measuring: every suite of a role with a problem is an error."""
    return {
        role: SuiteReports(model_ref=v.ref, errors={s: problems[role] for s in suites} if role in problems else {})
        for role, v in versions.items()
    }


def _gather(policy, suites, versions, datasets, home, registry, log, served, servers):
    """Materialize (checksums), validate the data, serve, measure: each step may stop the
    evaluation with errors that the verdict reports, before anything later happens."""
    from serving.engine import supported_architectures

    archs = supported_architectures()
    dirs, problems = {}, {}
    for role, version in versions.items():
        try:
            dirs[role] = registry.materialize(version.ref, home.checkpoints, archs)
        except RegistryError as error:
            log(f"{role} {version.ref} cannot be served: {error}")
            problems[role] = f"not served: {error}"
    if problems:
        return _with_errors(versions, suites, problems), {}, []

    max_new = max(policy.safety.max_new_tokens, policy.performance.max_tokens)
    try:
        validations = validate_datasets(datasets, served_context(policy, dirs["candidate"]) - max_new, _token_counter(dirs["candidate"]))
    except DatasetValidationError as error:
        log(str(error))
        return _with_errors(versions, suites, {role: str(error) for role in versions}), {}, error.outcomes
    log(f"Evaluation data valid ({', '.join(datasets)})")

    endpoints, problems = (served, {}) if served else _serve(policy, suites, versions["champion"], versions["candidate"], dirs, home, log, servers)
    if problems:
        return _with_errors(versions, suites, {r: f"vLLM did not start: {m}" for r, m in problems.items()}), {}, validations
    champion_reports, candidate_reports, raw = measure(policy, suites, endpoints["champion"], endpoints["candidate"], log)
    return {"champion": champion_reports, "candidate": candidate_reports}, raw, validations


def _serve(policy, suites, champion: VersionInfo, candidate: VersionInfo, dirs, home, log, servers: ExitStack):
    """Start both servers at once (one core each where possible). Returns endpoints, or the
    launch errors by role."""
    launcher = local_launcher(home)
    cores = core_plan(2, comparing_speed="performance" in suites)
    configs = {
        "champion": server_config(policy, dirs["champion"], champion.ref, cores[0]),
        "candidate": server_config(policy, dirs["candidate"], candidate.ref, cores[1]),
    }
    log(f"Starting vLLM for {champion.ref} and {candidate.ref} (about a minute)")
    endpoints: dict[str, Endpoint] = {}
    errors: dict[str, str] = {}
    with ThreadPoolExecutor(2) as pool:
        futures = {role: pool.submit(launcher.start, config) for role, config in configs.items()}
        for role, future in futures.items():
            try:
                handle = future.result()
            except LaunchError as error:
                errors[role] = str(error)
                continue
            servers.callback(handle.stop)
            endpoints[role] = Endpoint(handle.base_url, handle.config.served_model_name)
    return endpoints, errors


def benchmark_until_decided(policy: ReleasePolicy, champion: Endpoint, candidate: Endpoint, prompts, log: Log):
    """The policy's blocks; if the gate cannot decide from them, more blocks (pooled) up to
    `max_blocks`: noise from other work on the machine widens the interval, more pairs narrow it.
    One extension at most, fixed in size, so the test cannot be stopped at a convenient moment."""
    from evals.gates import performance_gate
    from evals.perf import pooled, run_benchmark

    perf = policy.performance
    report = run_benchmark(champion, candidate, prompts, perf, log)
    extra = perf.max_blocks - perf.blocks
    if extra > 0 and performance_gate(perf, report).outcome is Outcome.INCONCLUSIVE:
        log(f"Performance inconclusive after {perf.blocks} blocks; measuring {extra} more")
        more = run_benchmark(champion, candidate, prompts, perf.model_copy(update={"blocks": extra}), log, first_block=perf.blocks)
        report = pooled(report, more)
    return report


def measure(
    policy: ReleasePolicy, suites: tuple[str, ...], champion: Endpoint, candidate: Endpoint, log: Log = print
) -> tuple[SuiteReports, SuiteReports, dict[str, dict]]:
    """Run the suites against two served endpoints. A suite that crashes becomes an error in
    the reports (an ERROR gate), never a crashed release."""
    from evals.quality import run_quality
    from evals.safety import run_safety

    endpoints = {"champion": champion, "candidate": candidate}
    reports = {role: SuiteReports(model_ref=e.model) for role, e in endpoints.items()}
    raw: dict[str, dict] = {}

    def attempt(role: str, suite: str, run) -> None:
        try:
            report, raw[f"{suite}_{role}"] = run()
            reports[role] = reports[role].model_copy(update={suite: report})
        except Exception as error:
            errors = {**reports[role].errors, suite: f"{type(error).__name__}: {error}"}
            reports[role] = reports[role].model_copy(update={"errors": errors})

    for role, endpoint in endpoints.items():
        if "quality" in suites:
            log(f"Quality suite on {endpoint.model} ({', '.join(policy.quality.tasks)})")
            attempt(role, "quality", lambda: run_quality(endpoint, list(policy.quality.tasks)))
        if "safety" in suites:
            log(f"Safety suite on {endpoint.model}")
            attempt(role, "safety", lambda: run_safety(endpoint, policy.safety.confidence))
    if "performance" in suites:
        log(f"Performance benchmark: {policy.performance.blocks} alternating blocks of "
            f"{policy.performance.requests_per_block} requests per model")
        prompts = read_prompts(["arithmetic", "capitals"])
        attempt("candidate", "performance", lambda: (benchmark_until_decided(policy, champion, candidate, prompts, log), {}))
        raw.pop("performance_candidate", None)
    return reports["champion"], reports["candidate"], raw
