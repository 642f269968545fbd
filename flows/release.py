"""The release flow: one candidate version from the registry to production, or back out.

resolve -> verify -> quantize -> evaluate (safety, quality, performance vs the champion) ->
verdict -> approval -> canary through the gateway -> promote -> post-promotion watch.

Orchestration only: every decision is made in `evals`, `serving.canary` and `fledge.approval`,
every side effect sits in a task. Whatever ends the release early (a gate, an approver, a
timeout, the canary, the watch, an error) leaves the registry aliases and the traffic as they
were before it, stops the servers it started, and says why on the version, in the MLflow run
and in the flow run's artifacts. A release killed half-way is continued by running it again:
the saved release record keeps its snapshot and MLflow run, evaluations come from the cache,
and a canary resumes at the step it had reached.
"""

from __future__ import annotations

import getpass
import time
from contextlib import contextmanager

from prefect import flow, get_run_logger, runtime
from prefect.transactions import transaction
from pydantic import BaseModel, ConfigDict, Field

from evals.verdict import ReleaseVerdict, combine_verdicts
from fledge import releases
from fledge.approval import ApprovalOutcome
from fledge.home import FledgeHome
from fledge.outcome import Outcome
from fledge.policy import ReleasePolicy, load_policy
from fledge.releases import ReleaseInputError, ReleaseOutcome, ReleaseRecord
from fledge.rollout import rollout_state_path
from flows.approval import ask_for_approval
from flows.dispatch import evaluate_suites, quantize
from registry.errors import RegistryError
from registry.status import Status
from serving.canary.controller import Phase, RolloutState
from tasks import registry_steps, reporting, serving_steps
from tasks.common import registry

SUITE_ORDER = ("safety", "quality", "performance")  # cheapest first: the release stops at the first failed gate


class ReleaseSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    requested: str
    candidate: str
    champion_before: str
    outcome: ReleaseOutcome
    stage: str  # where the release ended
    reason: str
    verdict: str | None = None
    mlflow_run_id: str
    flow_run_id: str
    seconds: float
    stage_seconds: dict[str, float] = Field(default_factory=dict)
    stage_intervals: dict[str, list[tuple[float, float]]] = Field(default_factory=dict)
    evaluations_reused: list[str] = Field(default_factory=list)

    def to_markdown(self) -> str:
        rows = "\n".join(f"| {stage} | {seconds:.1f} |" for stage, seconds in self.stage_seconds.items())
        return (
            f"# Release of {self.candidate}: {self.outcome.value.upper()}\n\n"
            f"- Champion before: **{self.champion_before}**\n- Ended at: **{self.stage}**\n- Why: {self.reason}\n"
            f"- Verdict: {self.verdict or '-'}\n- MLflow run: `{self.mlflow_run_id}`\n"
            f"- Evaluations reused from the cache: {', '.join(self.evaluations_reused) or 'none'}\n\n"
            f"| stage | seconds |\n|---|---:|\n{rows}\n| **total** | **{self.seconds:.1f}** |\n"
        )


class _Ended(Exception):
    """A release stopped by a decision (not an error): outcome, stage and why."""

    def __init__(self, outcome: ReleaseOutcome, stage: str, reason: str):
        super().__init__(reason)
        self.outcome, self.stage, self.reason = outcome, stage, reason


class _Clock:
    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.intervals: dict[str, list[tuple[float, float]]] = {}  # epoch seconds, for overlap accounting
        self.stage = "start"

    @contextmanager
    def __call__(self, stage: str):
        self.stage = stage
        started, wall = time.monotonic(), time.time()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.monotonic() - started
            self.intervals.setdefault(stage, []).append((wall, time.time()))


def _open_record(model, candidate_version, champion, routes, policy, policy_file, home, log) -> tuple[ReleaseRecord, bool]:
    """The saved record of this release when a run of it was interrupted, else a new one."""
    store = registry()
    record = releases.load_record(home, model)
    if record is not None and record.requested != candidate_version.ref:
        raise ReleaseInputError(
            f"A release of {record.requested} is still in progress for {model} (flow runs {', '.join(record.flow_run_ids)}). "
            f"Run it again to finish it (`fledge release {model} --version {record.requested.rsplit('/', 1)[1]}`); "
            f"a finished release always leaves the registry and traffic consistent."
        )
    if record is not None:
        log(f"Continuing the release of {record.requested} that an earlier run started (MLflow run {record.mlflow_run_id})")
        return record, True
    snapshot = releases.take_snapshot(store, model, routes)
    run_id = releases.start_release_run(
        store, home, model, candidate_version.ref, champion.ref,
        params={"model": model, "candidate": candidate_version.ref, "champion": champion.ref,
                "policy_hash": policy.content_hash, "policy_file": str(policy_file or "policies/default.yaml"),
                "evaluation_policy_hash": policy.evaluation_hash},
        tags={},
    )
    releases.log_artifact_text(store, run_id, "policy.yaml", policy.model_dump_json(indent=2))
    rollout_state_path(home, model).unlink(missing_ok=True)  # a finished rollout of another release
    record = ReleaseRecord(model=model, candidate=candidate_version.ref, requested=candidate_version.ref,
                           champion=champion.ref, snapshot=snapshot, mlflow_run_id=run_id)
    return record, False


def _evaluate(record: ReleaseRecord, policy_file: str | None, clock: _Clock, log) -> tuple[ReleaseVerdict, dict, list]:
    results, skipped, reused = {}, {}, []
    for suite in SUITE_ORDER:
        failed = [s for s, r in results.items() if r.verdict.outcome is Outcome.FAIL]
        if failed:
            skipped[suite] = f"the release was already rejected by the {failed[0]} gate"
            continue
        with clock(f"evaluate {suite}"):
            result, cached = evaluate_suites(record.candidate, record.champion, suite, policy_file, record.mlflow_run_id)
        results[suite] = result
        if cached:
            reused.append(suite)
            log(f"{suite}: reused the evaluation finished by an earlier run (MLflow run {result.run_id})")
    verdict = combine_verdicts(load_policy(policy_file), [r.verdict for r in results.values()], skipped)
    return verdict, {suite: r.run_id for suite, r in results.items()}, reused


def _canary_promote_watch(record: ReleaseRecord, policy_file: str | None, clock: _Clock, log) -> RolloutState:
    """In one Prefect transaction: if the canary rolls back or the watch fails, the tasks'
    rollback hooks put the aliases and the traffic back as they were."""
    model = record.model
    with clock("serve candidate"):
        urls = serving_steps.serve_candidate(model, record.candidate, record.champion, policy_file)
    registry_steps.record_status(record.candidate, Status.CANARY)
    with transaction():
        with clock("canary"):
            state = serving_steps.run_canary(model, record.champion, record.candidate, urls, policy_file,
                                             record.snapshot.routes)
        reporting.publish_canary(model, record.mlflow_run_id, state)
        if state.phase is Phase.ROLLED_BACK:
            raise _Ended(ReleaseOutcome.ROLLED_BACK, "canary", "canary rolled back: " + (
                "; ".join(state.failed_checks) or state.history[-1].reason))
        with clock("promote"):
            serving_steps.retire_baseline(model, record.champion)
            registry_steps.promote_in_registry(model, record.candidate, record.champion, record.snapshot.aliases)
            baseline = serving_steps.stable_figures(model, record.champion, since=state.history[0].at)
        with clock("watch"):
            try:
                serving_steps.watch_new_champion(model, record.candidate, policy_file, baseline)
            except serving_steps.WatchBreach as breach:
                raise _Ended(ReleaseOutcome.ROLLED_BACK, "watch", str(breach)) from None
    return state


def _put_back(record: ReleaseRecord, log) -> None:
    """The registry and traffic as before the release, and no server of the release left
    running. Idempotent: the transaction's hooks may have done it already."""
    changes = registry_steps.restore_registry(record.model, record.snapshot.aliases)
    if changes:
        log("Registry put back: " + "; ".join(changes))
    serving_steps.restore_traffic(record.model, record.snapshot.routes)
    serving_steps.stop_instance(record.champion, staging=True)
    serving_steps.stop_instance(record.candidate)


@flow(name="release")
def release(model: str, candidate: str = "challenger", policy_file: str | None = None,
            auto_approve: bool = False) -> ReleaseSummary:
    """Release MODEL's CANDIDATE (a version number or an alias, default `challenger`) under
    the policy in POLICY_FILE (default policies/default.yaml)."""
    log = get_run_logger().info
    started, clock = time.monotonic(), _Clock()
    policy = load_policy(policy_file)
    home = FledgeHome.from_env().ensure()
    flow_run_id = str(runtime.flow_run.id) if runtime.flow_run.id else "local"
    candidate_version, champion, routes = registry_steps.check_release(model, candidate, policy_file, auto_approve)
    record, _ = _open_record(model, candidate_version, champion, routes, policy, policy_file, home, log)
    record.flow_run_ids.append(flow_run_id)
    releases.save_record(home, record)
    store = registry()
    store.client.set_tag(record.mlflow_run_id, "prefect.flow_run_ids", ",".join(record.flow_run_ids))
    store.client.set_tag(record.mlflow_run_id, "prefect.flow_run_url", runtime.flow_run.ui_url or "")
    reporting.link_mlflow_run(model, record.mlflow_run_id)
    registry_steps.record_status(record.requested, Status.EVALUATING, {
        releases.TAG_RELEASE_RUN: record.mlflow_run_id, releases.TAG_RELEASE_FLOW_RUN: flow_run_id})

    verdict: ReleaseVerdict | None = None
    reused: list[str] = []
    try:
        with clock("verify"):
            try:
                registry_steps.verify_artifact(record.requested)
            except RegistryError as error:
                raise _Ended(ReleaseOutcome.REJECTED, "verify", f"the artifact cannot be served: {error}") from None
        with clock("quantize"):
            quantized = quantize(record.requested, policy_file)
        if quantized["outcome"] != "pass":
            raise _Ended(ReleaseOutcome.REJECTED, "quantize", "quantization gate: " + "; ".join(quantized["reasons"]))
        if quantized["ref"] != record.candidate:
            record.candidate = quantized["ref"]
            releases.save_record(home, record)
            store.client.set_tag(record.mlflow_run_id, "fledge.released", record.candidate)
        verdict, eval_runs, reused = _evaluate(record, policy_file, clock, log)
        if not policy.canary.baseline_instance:  # else the staging champion is the canary's baseline
            serving_steps.stop_instance(record.champion, staging=True)
        reporting.publish_verdict(model, record.mlflow_run_id, verdict, eval_runs)
        name, version = record.candidate.rsplit("/", 1)
        store.set_tags(name, version, {"fledge.eval.verdict": verdict.outcome.value, "fledge.eval.run_id": record.mlflow_run_id})
        if verdict.outcome is not Outcome.PASS:
            blocking = [g for g in verdict.gates if g.outcome is not Outcome.PASS]
            raise _Ended(ReleaseOutcome.REJECTED, f"{blocking[0].gate} gate",
                         f"{verdict.outcome.value} at the {blocking[0].gate} gate: " + "; ".join(blocking[0].reasons))
        with clock("approval"):
            _approve(record, policy, auto_approve, verdict, store, log)
        _canary_promote_watch(record, policy_file, clock, log)
        with clock("retire previous"):
            serving_steps.retire_instance(model, record.champion)
        outcome, stage, reason = ReleaseOutcome.PROMOTED, "complete", (
            f"{record.candidate} is the champion; {record.champion} is previous")
    except _Ended as ended:
        outcome, stage, reason = ended.outcome, ended.stage, ended.reason
        log(f"Release {outcome.value} at {stage}: {reason}")
        _put_back(record, log)
    except BaseException as error:
        reason = f"{type(error).__name__}: {error}"
        get_run_logger().error(f"The release failed at {clock.stage}: {reason}. Putting everything back.")
        _put_back(record, log)
        _finish(record, ReleaseOutcome.FAILED, clock.stage, reason, verdict, home, flow_run_id, started, clock, reused)
        raise
    return _finish(record, outcome, stage, reason, verdict, home, flow_run_id, started, clock, reused)


def _approve(record: ReleaseRecord, policy: ReleasePolicy, auto_approve: bool, verdict: ReleaseVerdict, store, log) -> None:
    name, version = record.candidate.rsplit("/", 1)
    if not policy.approval.required or auto_approve:
        who = f"auto-approve by {getpass.getuser()}" if auto_approve else "not required by the policy"
        store.set_tags(name, version, {releases.TAG_APPROVAL: "approved", releases.TAG_APPROVER: who})
        store.client.set_tag(record.mlflow_run_id, "fledge.approval", who)
        log(f"Approval: {who}")
        return
    decision = ask_for_approval(verdict.to_markdown(), record.candidate, policy.approval)
    tags = {releases.TAG_APPROVAL: decision.outcome.value, releases.TAG_APPROVER: decision.approver or "-",
            releases.TAG_APPROVAL_COMMENT: decision.comment or "-"}
    store.set_tags(name, version, tags)
    for key, value in tags.items():
        store.client.set_tag(record.mlflow_run_id, key, value)
    log(f"Approval: {decision.reason}")
    if decision.outcome is not ApprovalOutcome.APPROVED:
        raise _Ended(ReleaseOutcome.REJECTED, "approval", decision.reason)


STATUS_AFTER = {ReleaseOutcome.PROMOTED: Status.CHAMPION, ReleaseOutcome.REJECTED: Status.REJECTED,
                ReleaseOutcome.ROLLED_BACK: Status.ROLLED_BACK, ReleaseOutcome.FAILED: Status.CANDIDATE}


def _finish(record, outcome, stage, reason, verdict, home, flow_run_id, started, clock, reused) -> ReleaseSummary:
    summary = ReleaseSummary(
        model=record.model, requested=record.requested, candidate=record.candidate, champion_before=record.champion,
        outcome=outcome, stage=stage, reason=reason, verdict=verdict.outcome.value if verdict else None,
        mlflow_run_id=record.mlflow_run_id, flow_run_id=flow_run_id, seconds=time.monotonic() - started,
        stage_seconds={k: round(v, 2) for k, v in clock.seconds.items()}, stage_intervals=clock.intervals,
        evaluations_reused=reused,
    )
    tags = {releases.TAG_RELEASE_OUTCOME: outcome.value, releases.TAG_RELEASE_REASON: reason[:4000],
            releases.TAG_RELEASE_RUN: record.mlflow_run_id, releases.TAG_RELEASE_FLOW_RUN: flow_run_id}
    for ref in {record.requested, record.candidate}:
        registry_steps.record_status(ref, STATUS_AFTER[outcome], tags)
    store = registry()
    for stage_name, seconds in clock.seconds.items():
        store.client.log_metric(record.mlflow_run_id, f"seconds.{stage_name.replace(' ', '_')}", seconds)
    store.client.log_metric(record.mlflow_run_id, "seconds.total", summary.seconds)
    reporting.publish_summary(record.model, record.mlflow_run_id, summary.to_markdown(), summary.model_dump(mode="json"))
    releases.finish_release_run(store, record.mlflow_run_id, outcome, reason)
    releases.clear_record(home, record.model)
    rollout_state_path(home, record.model).unlink(missing_ok=True)
    get_run_logger().info(f"Release of {record.candidate}: {outcome.value.upper()} ({reason})")
    return summary
