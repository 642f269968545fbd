"""The release flow: one candidate version from the registry to production, or back out.

resolve -> verify -> quantize -> evaluate (safety, quality, performance vs the champion) ->
verdict -> approval -> the rollout, handed to the serving plane's controller: canary through
the gateway -> promote (the aliases move) -> post-promotion watch.

Orchestration only: every decision is made in `evals`, `serving.canary` and
`fledge.services.approval`, every side effect sits in a task. The policy is loaded once, here,
and travels as the typed object (each task takes the section it needs); a re-run of a killed
release goes on with the content the release started with. Whatever ends the release early (a
gate, an approver, a timeout, the canary, the watch, an error) leaves the registry aliases and
the traffic as they were before it, stops the servers it started, and says why on the
version, in the MLflow run and in the flow run's artifacts.
"""

from __future__ import annotations

import getpass
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger, runtime
from prefect.states import Completed
from pydantic import BaseModel, ConfigDict, Field

from evals.verdict import ReleaseVerdict, combine_verdicts
from fledge.core import tags
from fledge.core.outcome import Outcome
from fledge.core.policy import ReleasePolicy
from fledge.core.tags import Status
from fledge.services import releases
from fledge.services.approval import ApprovalOutcome, Requester, identify_requester, mark_request_used, used_requests
from fledge.services.releases import STATUS_AFTER, ReleaseInputError, ReleaseOutcome, ReleaseRecord, ReleaseTarget
from flows.approval import ask_for_approval
from flows.dispatch import evaluate_suites, gpu_pool, quantize
from flows.run_origin import started_by_schedule
from flows.run_policy import run_policy
from registry.errors import RegistryError
from fledge.services.controller import RolloutEnd
from tasks import registry_steps, reporting, serving_steps
from tasks.common import preempted, workspace

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
        self.started = time.monotonic()
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


@dataclass
class _Release:
    """One run of the release flow: what it works on and what it has learnt so far."""

    record: ReleaseRecord
    flow_run_id: str
    clock: _Clock = field(default_factory=_Clock)
    verdict: ReleaseVerdict | None = None
    reused: list[str] = field(default_factory=list)

    @property
    def policy(self) -> ReleasePolicy:
        return self.record.policy

    @property
    def model(self) -> str:
        return self.record.model

    def save(self) -> None:
        releases.save_record(workspace().home, self.record)


def _open_record(target: ReleaseTarget, policy: ReleasePolicy, requester: Requester, log) -> ReleaseRecord:
    """The saved record of this release when a run of it was interrupted, else a new one."""
    model = target.candidate.name
    record = releases.load_record(workspace().home, model)
    if record is not None and record.requested != target.candidate.ref:
        raise ReleaseInputError(
            f"A release of {record.requested} is still in progress for {model} (flow runs {', '.join(record.flow_run_ids)}). "
            f"Run it again to finish it (`fledge release {model} --version {record.requested.rsplit('/', 1)[1]}`); "
            f"a finished release always leaves the registry and traffic consistent."
        )
    if record is not None:
        log(f"Continuing the release of {record.requested} that an earlier run started (MLflow run {record.mlflow_run_id})")
        if record.policy.content_hash != policy.content_hash:
            log(f"The policy now reads {policy.content_hash}; this release goes on with the content it started with "
                f"({record.policy.content_hash}), so every gate of it judges by the same rules")
        return record
    snapshot = releases.take_snapshot(workspace().registry, model, target.routes)
    run_id = registry_steps.start_release_run(
        "release", model, target.candidate.ref, target.champion.ref,
        params={"model": model, "candidate": target.candidate.ref, "champion": target.champion.ref,
                "policy_hash": policy.content_hash,
                "evaluation_policy_hash": policy.evaluation_hash},
        run_tags={tags.TAG_REQUESTED_BY: f"{requester.name} ({requester.how})"}, policy=policy,
    )
    if requester.request_digest:
        mark_request_used(workspace().home, requester.request_digest)
    return ReleaseRecord(model=model, candidate=target.candidate.ref, requested=target.candidate.ref,
                         champion=target.champion.ref, snapshot=snapshot, mlflow_run_id=run_id, policy=policy,
                         audit_seq=target.audit_seq, requester=requester)


def _evaluate(release: _Release, log) -> dict[str, str]:
    """Suite by suite, here or on the GPU pool; returns the evaluation runs by suite and sets
    the release's verdict."""
    record = release.record
    # Dispatched, the suites are one step to this process: timed as one; here, suite by suite.
    on_gpu = gpu_pool() is not None
    with release.clock("evaluate on the gpu pool") if on_gpu else nullcontext():
        outcomes = evaluate_suites(record.candidate, record.champion, list(SUITE_ORDER), release.policy,
                                   record.mlflow_run_id, clock=None if on_gpu else release.clock)
    results = {o.suite: o.result for o in outcomes if o.result is not None}
    skipped = {o.suite: o.skipped_because for o in outcomes if o.result is None}
    for o in outcomes:
        if o.cached:
            release.reused.append(o.suite)
            log(f"{o.suite}: reused the evaluation finished by an earlier run (MLflow run {o.result.run_id})")
    release.verdict = combine_verdicts(release.policy, [r.verdict for r in results.values()], skipped)
    return {suite: r.run_id for suite, r in results.items()}


def _review_markdown(rollout, candidate: str) -> str:
    review = rollout.review
    examples = "\n".join(f"- {e}" for e in review.examples) or "- (no example kept)"
    where = ("Users got none of its answers" if review.stage == "shadow" else
             f"The rollout holds where it is ({rollout.progress()})")
    return (f"## The {review.stage} stage of {candidate} needs a person\n\n"
            f"{where}. Mirrored pairs show a discordance the policy asks a person to judge "
            f"({', '.join(review.checks)}): without a guard model, the champion's refusal stands as the label, so the "
            f"candidate may have stopped over-refusing benign look-alikes (approve) or started complying with harmful "
            f"requests (reject).\n\n**Why:** {review.reason}\n\n**Example pairs:**\n{examples}\n")


def _canary_promote_watch(release: _Release, log, auto_approve: bool = False) -> None:
    """The rollout is the serving plane's: its controller runs the canary, moves the aliases on
    promotion, runs the watch and puts everything back on a failure, whether or not this run is
    still there to see it. The flow submits it (or finds the one an earlier run of this release
    submitted) and waits for its end."""
    record, policy, clock = release.record, release.policy, release.clock
    rollout = serving_steps.find_rollout(release.model, record.mlflow_run_id)
    if rollout is not None:
        log(f"The plane's controller has this release's rollout, submitted by an earlier run: {rollout.describe()}")
    else:
        with clock("serve candidate"):
            instances = serving_steps.serve_candidate(release.model, record.candidate, record.champion, policy.serving,
                                                      policy.canary.baseline_instance)
        registry_steps.record_status(record.candidate, Status.CANARY)
        judged = policy.for_adapter() if instances.adapter else policy  # an adapter's latency limit is LoRA's own
        rollout = serving_steps.submit_rollout(
            release.model, record.mlflow_run_id, record.champion, record.candidate, instances, judged.canary,
            judged.watch, record.snapshot.aliases, record.snapshot.routes,
            f"release of {record.candidate} (flow run {release.flow_run_id})",
            shadow=judged.shadow if judged.shadow.enabled else None)
    with clock("canary and watch"):
        while True:
            # --auto-approve never answers a question about the mirrored pairs: its timeout rolls the release back.
            ended = serving_steps.await_rollout(release.model, rollout.id, policy.canary.analysis_interval_seconds,
                                                patience_s=5 * policy.canary.progress_deadline_seconds,
                                                stop_at_review=not auto_approve)
            if not ended.running:
                break
            question = policy.approval.model_copy(update={"required": True,
                                                          "timeout_seconds": policy.shadow.review_timeout_seconds})
            decision, _ = ask_for_approval(_review_markdown(ended, record.candidate), record.candidate, question,
                                           key=f"review-{int(ended.review.asked_at)}", requester=record.requester.name)
            if decision.approver:  # no answer: the controller's own timeout rolls the rollout back
                serving_steps.answer_review(release.model, decision.outcome is ApprovalOutcome.APPROVED,
                                            decision.approver, decision.comment or None)
    if ended.canary is not None:
        reporting.publish_canary(release.model, record.mlflow_run_id, ended.canary)
    if ended.end is RolloutEnd.PROMOTED:
        return
    if ended.end is RolloutEnd.FAILED:
        raise RuntimeError(ended.reason)
    lost = preempted(release.model)
    if lost:  # aborted by the rollback that took the model over
        raise serving_steps.RolloutLost(lost)
    stage = ended.ended_in.value if ended.ended_in else "canary"
    raise _Ended(ReleaseOutcome.ROLLED_BACK, stage if stage in ("shadow", "watch") else "canary", ended.reason)


def _put_back(record: ReleaseRecord, log, keep_staging_copy: bool) -> None:
    """The registry and traffic as before the release, and no server of the release left
    running but, with `keep_staging_copy`, the champion's staging copy (no traffic) for the
    next release against it. Idempotent: the transaction's hooks may have done it already.
    A release that lost its lease (a rollback preempted it) puts nothing back."""
    lost = preempted(record.model)
    if lost:
        log(f"Nothing put back: {lost}")
        return
    # A rollout of this release still running (this run failed while waiting for it) ends first:
    # its controller puts traffic and aliases back and the steps below find nothing left to do.
    serving_steps.abort_rollout(record.model, f"the release of {record.candidate}, which stopped", record.mlflow_run_id)
    changes = registry_steps.restore_registry(record.model, record.snapshot.aliases)
    if changes:
        log("Registry put back: " + "; ".join(changes))
    serving_steps.restore_traffic(record.model, record.snapshot.routes)
    if keep_staging_copy:
        log(f"{record.champion}'s staging copy stays for the next release against it (no traffic)")
    else:
        serving_steps.stop_instance(record.champion, baseline=True)
    serving_steps.stop_instance(record.candidate)


def _approve(release: _Release, auto_approve: bool, eval_runs: dict[str, str], log) -> None:
    record, approval = release.record, release.policy.approval
    if not approval.required or auto_approve:
        who = f"auto-approve by {getpass.getuser()}" if auto_approve else "not required by the policy"
        registry_steps.tag_versions([record.candidate], {tags.TAG_APPROVAL: "approved", tags.TAG_APPROVER: who})
        registry_steps.tag_run(record.mlflow_run_id, {tags.RUN_APPROVAL: who})
        log(f"Approval: {who}")
        return
    decision, question = ask_for_approval(release.verdict.to_markdown(), record.candidate, approval,
                                          requester=record.requester.name, evaluation_runs=eval_runs)
    answer = {tags.TAG_APPROVAL: decision.outcome.value, tags.TAG_APPROVER: decision.approver or "-",
              tags.TAG_APPROVAL_COMMENT: decision.comment or "-", tags.TAG_APPROVAL_KEY: decision.key_fingerprint or "-",
              tags.TAG_APPROVAL_REPORT_DIGEST: question.report_digest,
              tags.TAG_APPROVAL_EVAL_RUNS: ",".join(f"{s}={r}" for s, r in question.evaluation_runs.items())}
    registry_steps.tag_versions([record.candidate], answer)
    registry_steps.tag_run(record.mlflow_run_id, answer)
    log(f"Approval: {decision.reason}")
    if decision.outcome is not ApprovalOutcome.APPROVED:
        raise _Ended(ReleaseOutcome.REJECTED, "approval", decision.reason)


def _run_gates_and_rollout(release: _Release, auto_approve: bool, log) -> tuple[ReleaseOutcome, str, str]:
    record, policy, clock = release.record, release.policy, release.clock
    if serving_steps.find_rollout(release.model, record.mlflow_run_id) is not None:
        # The gates passed and the approval was given before an earlier run submitted the rollout.
        _canary_promote_watch(release, log, auto_approve)
        return ReleaseOutcome.PROMOTED, "complete", f"{record.candidate} is the champion; {record.champion} is previous"
    serving_steps.stop_stale_staging(release.model, record.champion)
    with clock("verify"):
        try:
            registry_steps.verify_artifact(record.requested)
        except RegistryError as error:
            raise _Ended(ReleaseOutcome.REJECTED, "verify", f"the artifact cannot be served: {error}") from None
    with clock("quantize"):
        quantized = quantize(record.requested, policy, record.mlflow_run_id)
    if quantized.outcome is not Outcome.PASS:
        raise _Ended(ReleaseOutcome.REJECTED, "quantize", "quantization gate: " + "; ".join(quantized.reasons))
    if quantized.ref != record.candidate:
        record.candidate = quantized.ref
        release.save()
        registry_steps.tag_run(record.mlflow_run_id, {tags.RUN_RELEASED: record.candidate})
    eval_runs = _evaluate(release, log)
    # The champion's baseline instance stays for the canary, or as the staging copy for the next release.
    if not (policy.canary.baseline_instance or policy.serving.keep_staging_copy):
        serving_steps.stop_instance(record.champion, baseline=True)
    reporting.publish_verdict(release.model, record.mlflow_run_id, release.verdict, eval_runs)
    registry_steps.tag_versions([record.candidate], {tags.TAG_EVAL_VERDICT: release.verdict.outcome.value})
    if release.verdict.outcome is not Outcome.PASS:
        blocking = [g for g in release.verdict.gates if g.outcome is not Outcome.PASS]
        raise _Ended(ReleaseOutcome.REJECTED, f"{blocking[0].gate} gate",
                     f"{release.verdict.outcome.value} at the {blocking[0].gate} gate: " + "; ".join(blocking[0].reasons))
    with clock("approval"):
        _approve(release, auto_approve, eval_runs, log)
    _canary_promote_watch(release, log, auto_approve)
    return ReleaseOutcome.PROMOTED, "complete", f"{record.candidate} is the champion; {record.champion} is previous"


# The flow run's final state names the outcome, so the UI's run list reads right: a rejected
# or rolled-back release is not the green "Completed" of a promoted one (all are COMPLETED-type:
# the flow did its job; a FAILED outcome raises and is Prefect's own Failed).
FINAL_STATE = {ReleaseOutcome.PROMOTED: "Promoted", ReleaseOutcome.REJECTED: "Rejected",
               ReleaseOutcome.ROLLED_BACK: "RolledBack", ReleaseOutcome.PREEMPTED: "Preempted"}


@flow(name="release", flow_run_name="release-{model}-{candidate}")
def release(model: str, candidate: str = "challenger", policy: ReleasePolicy | None = None,
            overrides: dict[str, Any] | None = None, auto_approve: bool = False,
            requester_credential: str | None = None) -> ReleaseSummary:
    """Release MODEL's CANDIDATE (a version number or an alias, default `challenger`) under the
    deployment's policy. OVERRIDES (dotted fields, e.g. {"canary.bake_seconds": 120}) may only
    strengthen it, or weaken what its `overrides_allowed` lists; AUTO_APPROVE only where
    `approval.allow_auto_approve` permits it. REQUESTER_CREDENTIAL (from `fledge keys
    sign-request`) says who asks; the policy's four_eyes rule keeps them from approving it."""
    log = get_run_logger().info
    policy = run_policy(policy, overrides, auto_approve)  # refused here, before any work, if it weakens the deployed one
    flow_run_id = str(runtime.flow_run.id) if runtime.flow_run.id else "local"
    target = registry_steps.check_release(model, candidate, policy, auto_approve)
    requester = _requester(target, policy, requester_credential)
    if candidate != target.candidate.version:  # named after what it releases, not the alias it was asked for
        reporting.rename_flow_run(f"release-{model}-{target.candidate.version}")
    # One operator at a time: a second release of the model is refused, naming this one.
    with serving_steps.model_lease(model, "release", f"release of {target.candidate.ref} (flow run {flow_run_id})"):
        summary = _release_under_lease(target, policy, requester, auto_approve, flow_run_id, log)
    return Completed(name=FINAL_STATE[summary.outcome], message=summary.reason[:500], data=summary)


def _requester(target: ReleaseTarget, policy: ReleasePolicy, credential: str | None) -> Requester:
    """Who asked, by their signed request; a re-run of an interrupted release keeps its requester."""
    in_progress = releases.load_record(workspace().home, target.candidate.name)
    if in_progress is not None and in_progress.requested == target.candidate.ref and not credential:
        return in_progress.requester
    requester = identify_requester(credential, policy.approval, target.candidate.name, target.candidate.version,
                                   used_requests(workspace().home), started_by_schedule())
    get_run_logger().info(f"Requested by {requester.name} ({requester.how})")
    return requester


def _release_under_lease(target: ReleaseTarget, policy: ReleasePolicy, requester: Requester, auto_approve: bool,
                         flow_run_id: str, log) -> ReleaseSummary:
    model = target.candidate.name
    record = _open_record(target, policy, requester, log)
    record.flow_run_ids.append(flow_run_id)
    run = _Release(record, flow_run_id)
    run.save()
    registry_steps.tag_run(record.mlflow_run_id, {tags.RUN_FLOW_RUNS: ",".join(record.flow_run_ids),
                                                  tags.RUN_FLOW_RUN_URL: runtime.flow_run.ui_url or ""})
    reporting.link_mlflow_run(model, record.mlflow_run_id)
    registry_steps.record_status(record.requested, Status.EVALUATING, {
        tags.TAG_RELEASE_RUN: record.mlflow_run_id, tags.TAG_RELEASE_FLOW_RUN: flow_run_id})
    try:
        outcome, stage, reason = _run_gates_and_rollout(run, auto_approve, log)
    except _Ended as ended:
        outcome, stage, reason = ended.outcome, ended.stage, ended.reason
        log(f"Release {outcome.value} at {stage}: {reason}")
        _put_back(record, log, policy.serving.keep_staging_copy)
    except BaseException as error:
        lost = preempted(model)
        if lost:  # a rollback took the model over: stop cleanly, never undo it
            log(f"The release stops at {run.clock.stage}: {lost}. Nothing is put back.")
            return _finish(run, ReleaseOutcome.PREEMPTED, run.clock.stage, f"preempted at {run.clock.stage}: {lost}")
        reason = f"{type(error).__name__}: {error}"
        get_run_logger().error(f"The release failed at {run.clock.stage}: {reason}. Putting everything back.")
        _put_back(record, log, keep_staging_copy=False)  # after a failure, start the next release from scratch
        _finish(run, ReleaseOutcome.FAILED, run.clock.stage, reason)
        raise
    return _finish(run, outcome, stage, reason)


def _finish(release: _Release, outcome: ReleaseOutcome, stage: str, reason: str) -> ReleaseSummary:
    record, clock = release.record, release.clock
    summary = ReleaseSummary(
        model=record.model, requested=record.requested, candidate=record.candidate, champion_before=record.champion,
        outcome=outcome, stage=stage, reason=reason, verdict=release.verdict.outcome.value if release.verdict else None,
        mlflow_run_id=record.mlflow_run_id, flow_run_id=release.flow_run_id, seconds=time.monotonic() - clock.started,
        stage_seconds={k: round(v, 2) for k, v in clock.seconds.items()}, stage_intervals=clock.intervals,
        evaluations_reused=release.reused,
    )
    outcome_tags = {tags.TAG_RELEASE_OUTCOME: outcome.value, tags.TAG_RELEASE_REASON: reason[:4000],
                    tags.TAG_RELEASE_RUN: record.mlflow_run_id, tags.TAG_RELEASE_FLOW_RUN: release.flow_run_id}
    for ref in {record.requested, record.candidate}:
        registry_steps.record_status(ref, STATUS_AFTER[outcome], outcome_tags)
    reporting.publish_summary(record.model, record.mlflow_run_id, summary.to_markdown(), summary.model_dump(mode="json"))
    reporting.notify(release.policy.notifications, record.model, outcome.value,
                     f"Release of {record.candidate}: {outcome.value.upper()}",
                     summary.to_markdown() + f"\nFlow run: {runtime.flow_run.ui_url or release.flow_run_id}\n")
    reporting.publish_gateway_audit(record.model, record.mlflow_run_id, record.audit_seq)
    registry_steps.finish_release_run(record.mlflow_run_id, outcome, reason,
                                      {**clock.seconds, "total": summary.seconds})
    releases.clear_record(workspace().home, record.model)
    get_run_logger().info(f"Release of {record.candidate}: {outcome.value.upper()} ({reason})")
    return summary
