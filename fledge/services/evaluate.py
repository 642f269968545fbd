"""Evaluate a candidate against the champion, both as served: the wiring behind `fledge eval`
and the release flow's evaluation step. Decisions live in `evals.verdict`; this module only
materializes, validates, serves, measures, records and cleans up."""

from __future__ import annotations

import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from evals.datasets import QUESTION_DATASETS, SAFETY_TASKS, dataset_sha256, datasets_for_tasks, read_prompts
from evals.endpoint import Endpoint
from evals.lm_eval_runner import lm_eval_version
from evals.records import evaluation_metrics, write_evaluation_artifacts
from evals.validation import DatasetValidationError, ValidationOutcome, validate_datasets, validate_results
from evals.verdict import ReleaseVerdict, SuiteReports, release_verdict
from fledge.core.outcome import Outcome
from fledge.core.policy import ReleasePolicy, ServingPolicy
from fledge.core.tags import (
    EVAL_EXPERIMENT,
    RUN_CANDIDATE,
    RUN_CHAMPION,
    RUN_CHAMPION_CACHED,
    RUN_KIND,
    RUN_PARENT,
    RUN_POLICY_HASH,
    RUN_VERDICT,
    TAG_EVAL_CHAMPION,
    TAG_EVAL_RUN,
    TAG_EVAL_VERDICT,
    run_gate_tag,
)
from fledge.services.context import Workspace, local_launcher
from fledge.services.result_cache import ChampionResults
from registry.errors import RegistryError
from registry.store import VersionInfo
from serving.config import ServerConfig
from serving.engine import supported_architectures
from serving.errors import LaunchError

Log = Callable[[str], None]
ROLES = ("champion", "candidate")


@dataclass
class EvaluationResult:
    verdict: ReleaseVerdict
    run_id: str
    champion: SuiteReports
    candidate: SuiteReports
    seconds: float


def served_context(serving: ServingPolicy, model_dir: Path) -> int:
    """The policy's context length, capped at what the checkpoint supports: vLLM refuses to
    start when asked for more, and a model with a shorter window is served with its own."""
    config = json.loads((model_dir / "config.json").read_text())
    supported = config.get("max_position_embeddings") or serving.max_model_len
    return min(serving.max_model_len, int(supported))


def _takes_adapters(serving: ServingPolicy, model_dir: Path) -> bool:
    """LoRA on for the policy's servers, but not for quantized checkpoints: vLLM's CPU build
    fails to start a compressed-tensors w8a8 model with LoRA enabled ('NoneType' object has no
    attribute 'device' in engine init), so an adapter is served on a full-precision base only."""
    config = json.loads((model_dir / "config.json").read_text())
    return serving.lora.enabled and not config.get("quantization_config")


def server_config(serving: ServingPolicy, model_dir: Path, served_name: str, cores: str | None) -> ServerConfig:
    return ServerConfig(
        model_dir=model_dir,
        served_model_name=served_name,
        dtype=serving.dtype,
        max_model_len=served_context(serving, model_dir),
        kv_cache_gib=serving.kv_cache_gib,
        startup_timeout_s=serving.startup_timeout_seconds,
        cpu_cores=cores,
        enable_lora=_takes_adapters(serving, model_dir),
        max_lora_rank=serving.lora.max_rank,
        max_loras=serving.lora.max_loras,
        lora_target_modules=serving.lora.target_modules,
    )


def core_plan(n_servers: int, comparing_speed: bool = False) -> list[str | None]:
    """One core per server when the machine has enough, so concurrent servers do not fight;
    but not when their speeds are compared: the measuring client and the OS load one core more
    than the other (on 2 cores that alone made an A/A comparison read 1.19)."""
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


@dataclass
class _Evidence:
    """What one evaluation gathered, whatever stopped it."""

    reports: dict[str, SuiteReports]
    raw_outputs: dict[str, dict] = field(default_factory=dict)
    validations: list[ValidationOutcome] = field(default_factory=list)

    @classmethod
    def stopped(cls, versions: dict[str, VersionInfo], suites, problems: dict[str, str],
                validations: list[ValidationOutcome] | None = None) -> "_Evidence":
        """A stop before measuring: every suite of a role with a problem is an error."""
        reports = {role: SuiteReports(model_ref=v.ref, errors={s: problems[role] for s in suites} if role in problems else {})
                   for role, v in versions.items()}
        return cls(reports, validations=validations or [])


def _judged_by(policy: ReleasePolicy, candidate: VersionInfo) -> ReleasePolicy:
    return policy.for_adapter() if candidate.adapter_base else policy


def evaluate(
    candidate_ref: str,
    champion_ref: str,
    suites: tuple[str, ...],
    policy: ReleasePolicy,
    workspace: Workspace | None = None,
    *,
    served: dict[str, Endpoint] | None = None,
    parent_run_id: str | None = None,
    use_cache: bool = True,
    log: Log = print,
) -> EvaluationResult:
    """`served` (role -> endpoint) uses servers the caller already runs, e.g. the release flow's
    instances; otherwise both versions are served here and stopped afterwards. The evaluation
    is one MLflow run (experiment fledge-evaluations), a child of `parent_run_id` if given.
    The champion's quality and safety results come from the cache when nothing they depend on
    changed (`use_cache=False` measures them again)."""
    started = time.monotonic()
    workspace = workspace or Workspace.open()
    registry, runs = workspace.registry, workspace.registry.runs
    candidate, champion = registry.resolve(candidate_ref), registry.resolve(champion_ref)
    datasets = sorted(set(datasets_for_tasks(_tasks_for(suites, policy))
                          + (list(QUESTION_DATASETS) if "performance" in suites else [])))
    run_id = runs.start(EVAL_EXPERIMENT, f"eval-{candidate.ref}-vs-{champion.ref}", {
        RUN_CANDIDATE: candidate.ref, RUN_CHAMPION: champion.ref, RUN_KIND: "evaluation",
        RUN_POLICY_HASH: policy.content_hash, **({RUN_PARENT: parent_run_id} if parent_run_id else {}),
    })
    runs.log_params(run_id, {
        "candidate": candidate.ref, "champion": champion.ref, "suites": ",".join(suites),
        "policy_hash": policy.content_hash, "evaluation_policy_hash": policy.evaluation_hash,
        "lm_eval_version": lm_eval_version(),
        **{f"dataset_sha256.{name}": dataset_sha256(name) for name in datasets},
    })
    versions = {"champion": champion, "candidate": candidate}
    policy = _judged_by(policy, candidate)
    cache = ChampionResults(workspace.home.evaluation_cache)
    keys = {suite: key for suite in suites if (key := cache.key(champion, suite, policy))}
    reused = {suite: report for suite, key in keys.items()
              if use_cache and (report := cache.load(key, suite, champion.ref)) is not None}
    if reused:
        log(f"{champion.ref}: {', '.join(reused)} results reused (same files, policy, data, code and engine)")
        runs.set_tags(run_id, {RUN_CHAMPION_CACHED: ",".join(sorted(reused))})
    with ExitStack() as servers:  # every server started here is stopped, whatever happens after
        try:
            evidence = _gather(policy, suites, versions, datasets, workspace, log, served, servers, reused)
            for suite, key in keys.items():
                report = getattr(evidence.reports["champion"], suite)
                if suite not in reused and report is not None and suite not in evidence.reports["champion"].errors:
                    cache.save(key, report)
            servers.close()
            verdict = release_verdict(policy, evidence.reports["champion"], evidence.reports["candidate"], suites)
            _record(runs, run_id, verdict, evidence, policy.performance.metric)
            registry.set_tags(candidate.name, candidate.version, {
                TAG_EVAL_RUN: run_id, TAG_EVAL_VERDICT: verdict.outcome.value, TAG_EVAL_CHAMPION: champion.ref,
            })
            runs.finish(run_id)
        except BaseException:
            runs.finish(run_id, failed=True)
            raise
    return EvaluationResult(verdict, run_id, evidence.reports["champion"], evidence.reports["candidate"],
                            time.monotonic() - started)


def _record(runs, run_id: str, verdict: ReleaseVerdict, evidence: _Evidence, perf_metric: str) -> None:
    champion, candidate = evidence.reports["champion"], evidence.reports["candidate"]
    runs.log_metrics(run_id, evaluation_metrics(champion, candidate))
    with tempfile.TemporaryDirectory() as tmp:
        for path, folder in write_evaluation_artifacts(Path(tmp), verdict, champion, candidate, evidence.raw_outputs,
                                                       evidence.validations, perf_metric):
            runs.log_file(run_id, path, folder)
    runs.set_tags(run_id, {RUN_VERDICT: verdict.outcome.value,
                           **{run_gate_tag(gate.gate): gate.outcome.value for gate in verdict.gates}})


def _gather(policy, suites, versions, datasets, workspace: Workspace, log, served, servers: ExitStack,
            champion_results: dict) -> _Evidence:
    """Materialize (checksums), validate the data, serve, measure, validate the results: each
    step may stop the evaluation with errors that the verdict reports, before anything later."""
    registry, home = workspace.registry, workspace.home
    dirs, problems = {}, {}
    for role, version in versions.items():
        try:
            dirs[role] = registry.materialize(version.ref, home.checkpoints, supported_architectures())
        except RegistryError as error:
            log(f"{role} {version.ref} cannot be served: {error}")
            problems[role] = f"not served: {error}"
    if problems:
        return _Evidence.stopped(versions, suites, problems)

    max_new = max(policy.safety.max_new_tokens, policy.performance.max_tokens)
    # A LoRA adapter has neither config nor tokenizer of its own: its base's are what serves it.
    base = versions["candidate"].adapter_base
    serving_dir = registry.materialize(base, home.checkpoints, supported_architectures()) if base else dirs["candidate"]
    try:
        validations = validate_datasets(datasets, served_context(policy.serving, serving_dir) - max_new,
                                        _token_counter(serving_dir))
    except DatasetValidationError as error:
        log(str(error))
        return _Evidence.stopped(versions, suites, {role: str(error) for role in versions}, error.outcomes)
    log(f"Evaluation data valid ({', '.join(datasets)})")

    if served is None and base:
        problem = (f"{versions['candidate'].ref} is a LoRA adapter: it is evaluated on its base's server, which the "
                   "serving plane runs; start `fledge gateway` for the model and release it with `fledge release`")
        return _Evidence.stopped(versions, suites, {"candidate": problem}, validations)
    endpoints, problems = (served, {}) if served else _serve(policy, suites, versions, dirs, home, log, servers)
    if problems:
        return _Evidence.stopped(versions, suites, {r: f"vLLM did not start: {m}" for r, m in problems.items()}, validations)
    champion_reports, candidate_reports, raw = measure(policy, suites, endpoints["champion"], endpoints["candidate"], log,
                                                       champion_results)
    reports = {"champion": champion_reports, "candidate": candidate_reports}
    for role in ROLES:
        checked = validate_results(reports[role], policy.performance.max_tokens, policy.performance.requests_per_block)
        failed = {suite: outcome for suite, outcome in checked.items() if not outcome.success}
        if failed:
            errors = {**reports[role].errors, **{s: f"results failed validation: {', '.join(o.failures)}" for s, o in failed.items()}}
            reports[role] = reports[role].model_copy(update={"errors": errors})
        validations += [replace(o, name=f"{o.name}-{role}") for o in checked.values()]
    return _Evidence(reports, raw, validations)


def _serve(policy, suites, versions: dict[str, VersionInfo], dirs, home, log, servers: ExitStack):
    """Start both servers at once (one core each where possible). Returns endpoints, or the
    launch errors by role."""
    launcher = local_launcher(home)
    cores = dict(zip(ROLES, core_plan(2, comparing_speed="performance" in suites)))
    configs = {role: server_config(policy.serving, dirs[role], versions[role].ref, cores[role]) for role in ROLES}
    log(f"Starting vLLM for {versions['champion'].ref} and {versions['candidate'].ref} (about a minute)")
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
    """The policy's blocks, with at most two adaptive changes fixed in advance, so the test
    cannot be stopped at a convenient moment:

    - an interim look after `interim_blocks` (when set): a gate already decided at the
      stricter `interim_confidence` stops there (a clearly slower or clearly equal candidate
      needs no more; O'Brien-Fleming's boundary keeps the error rates as planned);
    - if the policy's blocks leave the gate inconclusive, more blocks (pooled) up to
      `max_blocks`: noise from other work on the machine widens the interval, more pairs narrow it.
    """
    from evals.gates import performance_gate
    from evals.perf import pooled, run_benchmark

    perf = policy.performance
    first = perf.interim_blocks or perf.blocks
    report = run_benchmark(champion, candidate, prompts, perf.model_copy(update={"blocks": first}), log)
    if perf.interim_blocks:
        interim = report.model_copy(update={"decided_at_interim": True})
        outcome = performance_gate(perf, interim).outcome
        if outcome in (Outcome.PASS, Outcome.FAIL):
            log(f"Performance decided at the interim look after {first} blocks ({outcome.value} at "
                f"{perf.interim_confidence:.1%} confidence); the other {perf.blocks - first} are not needed")
            return interim
        more = run_benchmark(champion, candidate, prompts, perf.model_copy(update={"blocks": perf.blocks - first}), log,
                             first_block=first)
        report = pooled(report, more)
    extra = perf.max_blocks - perf.blocks
    if extra > 0 and performance_gate(perf, report).outcome is Outcome.INCONCLUSIVE:
        log(f"Performance inconclusive after {perf.blocks} blocks; measuring {extra} more")
        more = run_benchmark(champion, candidate, prompts, perf.model_copy(update={"blocks": extra}), log, first_block=perf.blocks)
        report = pooled(report, more)
    return report


def measure(
    policy: ReleasePolicy, suites: tuple[str, ...], champion: Endpoint, candidate: Endpoint, log: Log = print,
    champion_results: dict | None = None,
) -> tuple[SuiteReports, SuiteReports, dict[str, dict]]:
    """Run the suites against two served endpoints; `champion_results` (suite -> report) are
    the champion's already known. A suite that crashes becomes an error in the reports (an
    ERROR gate), never a crashed release."""
    from evals.probe import EndpointBroken, probe
    from evals.quality import run_quality
    from evals.safety import run_safety

    endpoints = {"champion": champion, "candidate": candidate}
    known = champion_results or {}
    reports = {"champion": SuiteReports(model_ref=champion.model, **known), "candidate": SuiteReports(model_ref=candidate.model)}
    raw: dict[str, dict] = {}

    def attempt(role: str, suite: str, run) -> None:
        try:
            report, raw[f"{suite}_{role}"] = run()
            reports[role] = reports[role].model_copy(update={suite: report})
        except Exception as error:
            errors = {**reports[role].errors, suite: f"{type(error).__name__}: {error}"}
            reports[role] = reports[role].model_copy(update={"errors": errors})

    broken: dict[str, str] = {}
    for role, endpoint in endpoints.items():
        measured_here = [s for s in suites if not (role == "champion" and s in known)]
        if not measured_here:
            continue
        try:
            probe(endpoint)
        except EndpointBroken as error:
            log(str(error))
            broken[role] = str(error)
            errors = {**reports[role].errors, **{s: str(error) for s in measured_here}}
            reports[role] = reports[role].model_copy(update={"errors": errors})
            continue
        if "quality" in suites and not (role == "champion" and "quality" in known):
            log(f"Quality suite on {endpoint.model} ({', '.join(policy.quality.tasks)})")
            attempt(role, "quality", lambda: run_quality(endpoint, list(policy.quality.tasks)))
        if "safety" in suites and not (role == "champion" and "safety" in known):
            log(f"Safety suite on {endpoint.model}")
            attempt(role, "safety", lambda: run_safety(endpoint, policy.safety.confidence))
    if "performance" in suites and broken:
        reports["candidate"] = reports["candidate"].model_copy(update={"errors": {
            **reports["candidate"].errors, "performance": "; ".join(broken.values())}})
    elif "performance" in suites:
        perf = policy.performance
        log(f"Performance benchmark: {perf.blocks} alternating blocks of {perf.requests_per_block} requests per model"
            + (f", a look after {perf.interim_blocks}" if perf.interim_blocks else ""))
        prompts = read_prompts(list(QUESTION_DATASETS))
        attempt("candidate", "performance", lambda: (benchmark_until_decided(policy, champion, candidate, prompts, log), {}))
        raw.pop("performance_candidate", None)
    return reports["champion"], reports["candidate"], raw
