"""Personal keys for tests: alice and bob are listed in the policies the tests write, mallory
is not (her signatures are valid Ed25519 but count for nothing)."""

from __future__ import annotations

from functools import cache

from fledge.core.credentials import approval_message, new_private_key, public_key_text, sign, sign_request
from fledge.core.policy import ApprovalPolicy, Person


@cache
def key(name: str):
    return new_private_key()


def person(name: str) -> Person:
    return Person(name=name, public_key=public_key_text(key(name)))


def people(*names: str) -> list[dict]:
    return [person(n).model_dump() for n in names]


def approval_policy(base: ApprovalPolicy, approvers=("alice",), people_=("alice", "bob"), **update) -> ApprovalPolicy:
    data = {**base.model_dump(), "required": True, "people": people(*people_), "approvers": list(approvers),
            "timeout_seconds": 60, **update}
    return ApprovalPolicy.model_validate(data)


def signed_answer(name: str, flow_run_id: str, question: str, report_digest: str, approve: bool,
                  comment: str = "", signer: str | None = None) -> dict:
    """The form's fields as the UI would submit them, signed by SIGNER's key (default NAME's)."""
    credential = sign(key(signer or name), approval_message(flow_run_id, question, report_digest, approve))
    return {"approve": approve, "approver": name, "credential": credential, "comment": comment}


def request_credential(name: str, model: str, version: str, now: float | None = None) -> str:
    return sign_request(key(name), name, model, version, now).encode()


def paused_question(client, flow_run_id) -> tuple[str, str, str]:
    """(flow run id, question, report digest) as the paused run's form description shows them
    to the person in the UI: what an approver copies into `fledge keys sign-approval`."""
    import re

    from prefect.input.run_input import keyset_from_paused_state, read_flow_run_input

    run = client.read_flow_run(flow_run_id)
    description = read_flow_run_input(keyset_from_paused_state(run.state)["description"], flow_run_id=run.id) or ""
    found = re.search(r"fledge keys sign-approval (\S+) (\S+) ([0-9a-f]{64})", description)
    assert found, f"the form's description shows no signing command: {description[:500]}"
    return found.group(1), found.group(2), found.group(3)


def answer_as_shown(client, flow_run_id, name: str, approve: bool, comment: str = "", signer: str | None = None) -> dict:
    """The answer NAME gives after reading the form: signed for the question it shows."""
    run_id, question, report_digest = paused_question(client, flow_run_id)
    return signed_answer(name, run_id, question, report_digest, approve, comment, signer)
