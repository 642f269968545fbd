"""Approvals and requests that cannot be typed or replayed: a name alone counts for nothing, a
signature counts only for its run, question, report and answer, a request counts once and only
while fresh, and with four_eyes the requester cannot approve."""

import pytest
from support.keys import approval_policy, request_credential, signed_answer

from fledge.core.credentials import digest
from fledge.core.policy import ReleasePolicy, load_policy
from fledge.services.approval import (ApprovalAnswer, ApprovalOutcome, Question, RequestRefused, identify_requester,
                                      judge_approval)

POLICY = load_policy()
APPROVAL = approval_policy(POLICY.approval, approvers=("alice", "bob"), people_=("alice", "bob", "carol"))
QUESTION = Question(flow_run_id="run-1", key="approval", report_digest=digest("# verdict: PASS"))


def judge(answer: dict | None, policy=APPROVAL, question=QUESTION, requester=None):
    return judge_approval(None if answer is None else ApprovalAnswer.model_validate(answer), policy, question, requester)


def test_a_signed_answer_approves_and_records_the_key():
    decision = judge(signed_answer("alice", "run-1", "approval", QUESTION.report_digest, True, "numbers look good"))
    assert decision.outcome is ApprovalOutcome.APPROVED and decision.approver == "alice"
    assert decision.reason == "approved by alice: numbers look good" and len(decision.key_fingerprint) == 16


def test_a_signed_rejection_rejects():
    decision = judge(signed_answer("bob", "run-1", "approval", QUESTION.report_digest, False, "wait for Monday"))
    assert decision.outcome is ApprovalOutcome.REJECTED and "rejected by bob: wait for Monday" in decision.reason


@pytest.mark.parametrize("answer, says", [
    ({"approve": True, "approver": "alice"}, "no valid credential: a name alone is not an approval"),
    ({"approve": True, "approver": "alice", "credential": "not base64!"}, "no valid credential"),
    (signed_answer("alice", "run-1", "approval", QUESTION.report_digest, True, signer="bob"), "no valid credential"),
    (signed_answer("alice", "run-2", "approval", QUESTION.report_digest, True), "no valid credential"),  # another run
    (signed_answer("alice", "run-1", "review-5", QUESTION.report_digest, True), "no valid credential"),  # another question
    (signed_answer("alice", "run-1", "approval", digest("# verdict: FAIL"), True), "no valid credential"),  # another report
    ({**signed_answer("alice", "run-1", "approval", QUESTION.report_digest, False), "approve": True},
     "no valid credential"),  # a rejection's signature flipped to an approval
    (signed_answer("mallory", "run-1", "approval", QUESTION.report_digest, True), "mallory may not answer"),
    (signed_answer("carol", "run-1", "approval", QUESTION.report_digest, True), "carol may not answer"),  # listed, not an approver
    ({"approve": True, "approver": "  "}, "does not say who"),
])
def test_answers_that_do_not_count(answer, says):
    decision = judge(answer)
    assert decision.outcome is ApprovalOutcome.NOT_ALLOWED
    assert says in decision.reason


def test_the_form_tells_the_approver_how_to_sign():
    decision = judge({"approve": True, "approver": "alice"})
    assert f"fledge keys sign-approval run-1 approval {QUESTION.report_digest} --approve" in decision.reason


def test_no_answer_rejects():
    assert judge(None).outcome is ApprovalOutcome.REJECTED


def test_four_eyes_keeps_the_requester_from_approving():
    answer = signed_answer("alice", "run-1", "approval", QUESTION.report_digest, True)
    assert judge(answer, requester="alice").outcome is ApprovalOutcome.APPROVED  # four_eyes off
    strict = APPROVAL.model_copy(update={"four_eyes": True})
    decision = judge(answer, policy=strict, requester="alice")
    assert decision.outcome is ApprovalOutcome.NOT_ALLOWED and "four_eyes" in decision.reason
    bob = signed_answer("bob", "run-1", "approval", QUESTION.report_digest, True)
    assert judge(bob, policy=strict, requester="alice").outcome is ApprovalOutcome.APPROVED


def test_a_signed_request_identifies_its_requester_once_and_while_fresh():
    credential = request_credential("alice", "m", "3", now=1000)
    requester = identify_requester(credential, APPROVAL, "m", "3", used=set(), scheduled_by=None, now=1010)
    assert (requester.name, requester.how) == ("alice", "signed request") and requester.request_digest
    with pytest.raises(RequestRefused, match="already used"):
        identify_requester(credential, APPROVAL, "m", "3", used={requester.request_digest}, scheduled_by=None, now=1010)
    with pytest.raises(RequestRefused, match="signed 1000 s ago"):
        identify_requester(credential, APPROVAL, "m", "3", used=set(), scheduled_by=None, now=2000)
    with pytest.raises(RequestRefused, match="does not verify for alice asking for m/4"):
        identify_requester(credential, APPROVAL, "m", "4", used=set(), scheduled_by=None, now=1010)


def test_a_forged_request_is_refused():
    forged = request_credential("mallory", "m", "3", now=1000).replace("mallory", "alice", 1)
    with pytest.raises(RequestRefused, match="does not verify for alice"):
        identify_requester(forged, APPROVAL, "m", "3", used=set(), scheduled_by=None, now=1010)
    with pytest.raises(RequestRefused, match="NAME:ISSUED_AT:SIGNATURE"):
        identify_requester("alice", APPROVAL, "m", "3", used=set(), scheduled_by=None, now=1010)


def test_without_a_credential_the_requester_is_the_schedule_or_unidentified_and_four_eyes_needs_one():
    assert identify_requester(None, APPROVAL, "m", "3", set(), "schedule of release-watch").how == "schedule"
    assert identify_requester(None, APPROVAL, "m", "3", set(), None).name == "unidentified"
    strict = APPROVAL.model_copy(update={"four_eyes": True})
    with pytest.raises(RequestRefused, match="four_eyes rule needs to know who asked"):
        identify_requester(None, strict, "m", "3", set(), None)


def test_the_people_and_their_keys_are_policy_content_covered_by_its_hash():
    policy = POLICY.model_copy(update={"approval": APPROVAL})
    other = approval_policy(POLICY.approval, approvers=("alice", "bob"), people_=("alice", "bob", "mallory"))
    assert policy.content_hash != POLICY.model_copy(update={"approval": other}).content_hash
    assert ReleasePolicy.model_validate(policy.model_dump(mode="json")) == policy  # travels as content


@pytest.mark.parametrize("update, says", [
    ({"approvers": ["dave"]}, "are not in approval.people"),
    ({"people": [{"name": "alice", "public_key": "ed25519:bm90IGEga2V5"}]}, "not an Ed25519 public key"),
    ({"people": [], "approvers": []}, "approval.required needs approval.people"),
])
def test_approval_policies_that_cannot_work_are_refused_at_load(update, says):
    with pytest.raises(ValueError, match=says):
        type(APPROVAL).model_validate({**APPROVAL.model_dump(), **update})
