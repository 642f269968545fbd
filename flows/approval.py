"""The approval step: the flow run pauses with a typed form whose description is the report, so
an approver decides from the Prefect UI alone; no counted answer in time rejects.

An answer counts only with the approver's signature of this run, this question, the report's
digest and the answer (fledge.services.approval); one without is logged and the run keeps
waiting, so a forged answer can neither approve nor end the wait early.
"""

from __future__ import annotations

import time

from prefect import get_run_logger, runtime
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from fledge.core.credentials import digest
from fledge.core.policy import ApprovalPolicy
from fledge.services.approval import (ApprovalAnswer, ApprovalDecision, ApprovalOutcome, Question, judge_approval,
                                      signing_command)


class ApprovalForm(RunInput):
    approve: bool = Field(False, description="Tick to approve the release; leave unticked to reject it.")
    approver: str = Field("", description="Your name, as the release policy lists you in approval.people.")
    credential: str = Field("", description="Your signature of this question and answer: run the command in the "
                                            "description with your own key file and paste what it prints.")
    comment: str = Field("", description="Why: recorded on the model version and in the MLflow run.")


def _description(report: str, candidate: str, policy: ApprovalPolicy, question: Question) -> str:
    who = ", ".join(p.name for p in policy.may_approve()) or "nobody: the policy lists no people"
    return (
        f"## Approve the release of {candidate}?\n\n"
        f"Approvers: {who}. No counted answer within {policy.timeout_seconds:g} s rejects the release.\n\n"
        f"- Flow run: `{question.flow_run_id}`\n- Question: `{question.key}`\n"
        f"- Report digest (SHA-256 of the report below): `{question.report_digest}`\n\n"
        f"Sign your answer with your own key and paste the result as the credential:\n\n"
        f"    {signing_command(question, True)}\n\n(`--reject` to reject). A name without a valid credential is not "
        f"counted.\n\n" + report
    )


def _reclaim_after_pause_expiry() -> None:
    """The pause's timeout is also the server's: its pause-expiration service marks a run still
    paused past it Failed ("paused and never resumed"), racing this process's own timeout. The
    run is alive and decides the timeout itself (the release is rejected, everything put back),
    so it takes its run back to Running; otherwise a rejected release would show as Failed."""
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    if runtime.flow_run.id:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(runtime.flow_run.id, Running(), force=True)


def ask_for_approval(report: str, candidate: str, policy: ApprovalPolicy, key: str = "approval",
                     requester: str | None = None, evaluation_runs: dict[str, str] | None = None
                     ) -> tuple[ApprovalDecision, Question]:
    """Pause until an allowed person's signed answer arrives or the policy's timeout passes."""
    log = get_run_logger()
    question = Question(flow_run_id=str(runtime.flow_run.id or "local"), key=key, report_digest=digest(report),
                        evaluation_runs=evaluation_runs or {})
    description = _description(report, candidate, policy, question)
    deadline = time.monotonic() + policy.timeout_seconds
    waker = _DeadlineWaker(deadline)
    try:
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return judge_approval(None, policy, question), question
            log.info(f"Waiting for approval of {candidate} ({remaining:.0f} s left): answer the form on this flow run "
                     f"in the Prefect UI with your signed credential (report digest {question.report_digest[:16]})")
            attempt += 1
            try:
                answer = pause_flow_run(
                    wait_for_input=ApprovalForm.with_initial_data(description=description),
                    timeout=int(remaining) + SERVER_GRACE_S,
                    poll_interval=max(1, min(10, int(remaining // 5) or 1)),
                    key=f"{key}-{attempt}",
                )
            except FlowPauseTimeout:
                _reclaim_after_pause_expiry()
                return judge_approval(None, policy, question), question
            decision = judge_approval(ApprovalAnswer.model_validate(answer.model_dump()), policy, question, requester)
            if decision.outcome is not ApprovalOutcome.NOT_ALLOWED:
                return decision, question
            if not waker.woke:
                log.warning(f"Answer not counted: {decision.reason}")
    finally:
        waker.cancel()


# The server's pause expiry (its pause-expiration service marks a run paused past it Failed) is
# set this much after the policy's deadline, which this process keeps itself (_DeadlineWaker):
# a rejected release never shows as Failed for the race between the two.
SERVER_GRACE_S = 60


class _DeadlineWaker:
    """At the deadline, resume the paused run with an empty answer: it counts for nothing and
    wakes the flow, which then finds its time up."""

    def __init__(self, deadline: float):
        import threading

        self.woke = False
        self._run_id = runtime.flow_run.id
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._wake)
        self._timer.daemon = True
        if self._run_id:
            self._timer.start()

    def _wake(self) -> None:
        from prefect.flow_runs import resume_flow_run

        self.woke = True
        try:
            resume_flow_run(self._run_id, run_input={"approve": False, "approver": "", "credential": "",
                                                     "comment": "the approval's deadline passed"})
        except Exception:  # not paused at that instant: the loop sees the deadline itself
            pass

    def cancel(self) -> None:
        self._timer.cancel()
