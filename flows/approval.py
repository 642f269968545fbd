"""The approval step: the flow run pauses with a typed form whose description is the verdict
report, so an approver decides from the Prefect UI alone; no answer in time rejects."""

from __future__ import annotations

import time

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from fledge.services.approval import ApprovalAnswer, ApprovalDecision, ApprovalOutcome, judge_approval
from fledge.core.policy import ApprovalPolicy


class ApprovalForm(RunInput):
    approve: bool = Field(False, description="Tick to approve the release; leave unticked to reject it.")
    approver: str = Field("", description="Your name, as the release policy lists approvers.")
    comment: str = Field("", description="Why: recorded on the model version and in the MLflow run.")


def ask_for_approval(verdict_markdown: str, candidate: str, policy: ApprovalPolicy) -> ApprovalDecision:
    """Pause until an allowed person answers or the policy's timeout passes. An answer from
    someone the policy does not allow is logged and the flow keeps waiting."""
    log = get_run_logger()
    who = ", ".join(policy.approvers) if policy.approvers else "anyone"
    description = (
        f"## Approve the release of {candidate}?\n\n"
        f"Approvers: {who}. No answer within {policy.timeout_seconds:g} s rejects the release.\n\n" + verdict_markdown
    )
    deadline = time.monotonic() + policy.timeout_seconds
    attempt = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return judge_approval(None, policy)
        log.info(f"Waiting for approval of {candidate} ({who}; {remaining:.0f} s left): "
                 "answer the form on this flow run in the Prefect UI")
        attempt += 1
        try:
            answer = pause_flow_run(
                wait_for_input=ApprovalForm.with_initial_data(description=description),
                timeout=max(1, int(remaining)),
                poll_interval=max(1, min(10, int(remaining // 5) or 1)),
                key=f"approval-{attempt}",
            )
        except FlowPauseTimeout:
            return judge_approval(None, policy)
        decision = judge_approval(ApprovalAnswer.model_validate(answer.model_dump()), policy)
        if decision.outcome is not ApprovalOutcome.NOT_ALLOWED:
            return decision
        log.warning(f"Answer not counted: {decision.reason}")
