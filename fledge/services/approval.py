"""Who asked for a release and who answered it, judged by their signatures. Pure, but for the
two small functions at the end that keep the signed requests already used.

An answer counts only with a valid credential (fledge.core.credentials): a name typed in the
Prefect UI's form is not an approval, and a signature seen in the API is bound to its run, its
question, the report shown and the answer given. The approver is judged against the policy the
release runs under (its people, its approvers, four_eyes).
"""

from __future__ import annotations

import hashlib
import time
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from fledge.core.credentials import (CredentialError, RequestCredential, approval_message, fingerprint, is_signed_by,
                                     request_message)
from fledge.core.errors import FledgeError
from fledge.core.home import FledgeHome
from fledge.core.policy import ApprovalPolicy
from fledge.core.state import read_json, write_json


class ApprovalAnswer(BaseModel):
    """What the approver filled in (the Prefect UI form has these fields)."""

    model_config = ConfigDict(extra="ignore")

    approve: bool
    approver: str
    credential: str = ""
    comment: str = ""


class Question(BaseModel):
    """What a person is asked: the run, which of its questions, and the digest of the report shown."""

    model_config = ConfigDict(extra="forbid")

    flow_run_id: str
    key: str  # e.g. approval-1: a run may ask more than once (an answer that did not count, a review)
    report_digest: str
    evaluation_runs: dict[str, str] = Field(default_factory=dict)  # suite -> MLflow run id behind the report


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
    key_fingerprint: str = ""  # of the key whose signature counted


def signing_command(question: Question, approve: bool) -> str:
    verb = "--approve" if approve else "--reject"
    return (f"fledge keys sign-approval {question.flow_run_id} {question.key} {question.report_digest} {verb} "
            "--key YOUR_KEY_FILE")


def judge_approval(answer: ApprovalAnswer | None, policy: ApprovalPolicy, question: Question,
                   requester: str | None = None) -> ApprovalDecision:
    if answer is None:
        return ApprovalDecision(outcome=ApprovalOutcome.REJECTED, approver="", comment="",
                                reason=f"no answer within {policy.timeout_seconds:g} s: a release nobody approved is rejected")

    def not_counted(why: str) -> ApprovalDecision:
        return ApprovalDecision(outcome=ApprovalOutcome.NOT_ALLOWED, approver=who, comment=answer.comment, reason=why)

    who = answer.approver.strip()
    if not who:
        return not_counted("the answer does not say who gave it: fill in 'approver'")
    allowed = {p.name: p for p in policy.may_approve()}
    if who not in allowed:
        listed = ", ".join(allowed) or "nobody (the policy lists no people)"
        return not_counted(f"{who} may not answer for this release (the policy allows {listed})")
    message = approval_message(question.flow_run_id, question.key, question.report_digest, answer.approve)
    if not answer.credential.strip() or not is_signed_by(allowed[who].public_key, message, answer.credential):
        return not_counted(
            f"the answer names {who} but carries no valid credential: a name alone is not an approval. {who} signs "
            f"this question with their own key: `{signing_command(question, answer.approve)}`")
    if policy.four_eyes and requester == who:
        return not_counted(f"{who} asked for this release, and the policy's four_eyes rule needs another approver")
    verb = "approved" if answer.approve else "rejected"
    return ApprovalDecision(outcome=ApprovalOutcome.APPROVED if answer.approve else ApprovalOutcome.REJECTED,
                            approver=who, comment=answer.comment, key_fingerprint=fingerprint(allowed[who].public_key),
                            reason=f"{verb} by {who}" + (f": {answer.comment}" if answer.comment else ""))


# ---- the requester -----------------------------------------------------------------------------

class RequestRefused(FledgeError):
    """A release request whose credential does not identify its requester, as the policy needs."""


class Requester(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str  # a person from the policy, the schedule that started the release, or "unidentified"
    how: str  # signed request | schedule | unidentified
    request_digest: str = ""  # of the accepted credential (each counts once)

    @property
    def is_person(self) -> bool:
        return self.how == "signed request"


def identify_requester(credential: str | None, policy: ApprovalPolicy, model: str, version: str,
                       used: set[str], scheduled_by: str | None, now: float | None = None) -> Requester:
    """Who asked for the release of MODEL/VERSION, or RequestRefused naming the rule and the fix."""
    now = time.time() if now is None else now
    fix = f"sign the request with your key: `fledge keys sign-request {model} {version} --key YOUR_KEY_FILE`"
    if not credential:
        if scheduled_by:
            return Requester(name=scheduled_by, how="schedule")
        if policy.four_eyes:
            raise RequestRefused(
                f"The policy's four_eyes rule needs to know who asked for this release, and the run carries no "
                f"requester credential: {fix}, and pass what it prints as the run's requester_credential.")
        return Requester(name="unidentified", how="unidentified")
    try:
        request = RequestCredential.decode(credential)
    except CredentialError as error:
        raise RequestRefused(f"{error} ({fix})") from None
    person = policy.person(request.requester)
    message = request_message(model, version, request.issued_at)
    if person is None or not is_signed_by(person.public_key, message, request.signature):
        raise RequestRefused(
            f"The requester credential does not verify for {request.requester} asking for {model}/{version} "
            f"(a person listed in approval.people signs exactly this model and version): {fix}.")
    age = now - request.issued_at
    if not -60 <= age <= policy.request_max_age_seconds:
        raise RequestRefused(
            f"The requester credential of {request.requester} was signed {age:.0f} s ago; the policy accepts one for "
            f"{policy.request_max_age_seconds:g} s: {fix} again.")
    request_digest = hashlib.sha256(request.signature.encode()).hexdigest()
    if request_digest in used:
        raise RequestRefused(
            f"The requester credential of {request.requester} was already used for a release; each counts once "
            f"(one seen in the Prefect API must not start another): {fix} again.")
    return Requester(name=request.requester, how="signed request", request_digest=request_digest)


def used_requests(home: FledgeHome) -> set[str]:
    return set(read_json(home.files.used_requests) or [])


def mark_request_used(home: FledgeHome, request_digest: str) -> None:
    write_json(home.files.used_requests, sorted(used_requests(home) | {request_digest}))
