"""The approval decision: a person's answer (or its absence) against the policy. Pure."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from fledge.core.policy import ApprovalPolicy


class ApprovalAnswer(BaseModel):
    """What the approver filled in (the Prefect UI form has these fields)."""

    model_config = ConfigDict(extra="ignore")

    approve: bool
    approver: str
    comment: str = ""


class ApprovalOutcome(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"
    NOT_ALLOWED = "not_allowed"  # the answer does not count; the release keeps waiting


class ApprovalDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: ApprovalOutcome
    approver: str
    comment: str
    reason: str


def judge_approval(answer: ApprovalAnswer | None, policy: ApprovalPolicy) -> ApprovalDecision:
    if answer is None:
        return ApprovalDecision(outcome=ApprovalOutcome.REJECTED, approver="", comment="",
                                reason=f"no answer within {policy.timeout_seconds:g} s: a release nobody approved is rejected")
    who = answer.approver.strip()
    if not who:
        return ApprovalDecision(outcome=ApprovalOutcome.NOT_ALLOWED, approver="", comment=answer.comment,
                                reason="the answer does not say who gave it: fill in 'approver'")
    if policy.approvers and who not in policy.approvers:
        return ApprovalDecision(outcome=ApprovalOutcome.NOT_ALLOWED, approver=who, comment=answer.comment,
                                reason=f"{who} may not answer for this release (the policy allows {', '.join(policy.approvers)})")
    if answer.approve:
        return ApprovalDecision(outcome=ApprovalOutcome.APPROVED, approver=who, comment=answer.comment,
                                reason=f"approved by {who}" + (f": {answer.comment}" if answer.comment else ""))
    return ApprovalDecision(outcome=ApprovalOutcome.REJECTED, approver=who, comment=answer.comment,
                            reason=f"rejected by {who}" + (f": {answer.comment}" if answer.comment else ""))
