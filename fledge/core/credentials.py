"""Credentials that cannot be typed or replayed: Ed25519 signatures over what a person decides.

Prefect's open-source server has no user identity and keeps every form answer readable through
its API, so a credential must be useless once seen. A signature is: it covers this flow run,
this question, the digest of the report shown and the answer given, so it proves nothing about
any other run, question, report or answer. Signatures rather than an HMAC: an HMAC's verifier
must hold the approver's secret key, and anything the release's side holds (a Prefect Secret
block, a worker's environment) is readable by whoever can read the API or the worker; a public
key is not a secret, so the policy can carry it in its content, covered by its hash.

A requester's credential signs the release asked for and when; it is accepted once (see
fledge.services.approval) and only while fresh, since no run id exists before the run does.
"""

from __future__ import annotations

import base64
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fledge.core.errors import FledgeError

KEY_PREFIX = "ed25519:"


class CredentialError(FledgeError):
    """A key or a credential that cannot be read; the message says which and how to make one."""


def digest(text: str) -> str:
    """What an approver's signature covers of a report: its SHA-256, hex."""
    return hashlib.sha256(text.encode()).hexdigest()


def approval_message(flow_run_id: str, question: str, report_digest: str, approve: bool) -> bytes:
    return f"fledge-approval\n{flow_run_id}\n{question}\n{report_digest}\n{'approve' if approve else 'reject'}".encode()


def request_message(model: str, candidate: str, issued_at: int) -> bytes:
    return f"fledge-release-request\n{model}\n{candidate}\n{issued_at}".encode()


# ---- keys ---------------------------------------------------------------------------------------

def new_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise CredentialError(f"{path} is not a readable Ed25519 private key ({error}); make one with "
                              "`fledge keys new NAME`.") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CredentialError(f"{path} is not an Ed25519 key; make one with `fledge keys new NAME`.")
    return key


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The form the policy lists a person's key in: `ed25519:` and the raw 32 bytes in base64."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return KEY_PREFIX + base64.b64encode(raw).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    if not text.startswith(KEY_PREFIX):
        raise ValueError(f"a public key reads {KEY_PREFIX}BASE64 (from `fledge keys new NAME`), not {text[:20]!r}")
    try:
        raw = base64.b64decode(text[len(KEY_PREFIX):], validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as error:
        raise ValueError(f"{text[:30]!r} is not an Ed25519 public key: {error}") from None


def fingerprint(public_key: str) -> str:
    """Short, for showing which key signed: the SHA-256 of the key text's bytes, 16 hex."""
    return hashlib.sha256(public_key.encode()).hexdigest()[:16]


# ---- signing and checking ----------------------------------------------------------------------

def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message)).decode()


def is_signed_by(public_key: str, message: bytes, credential: str) -> bool:
    try:
        signature = base64.b64decode(credential.strip(), validate=True)
        parse_public_key(public_key).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


@dataclass(frozen=True)
class RequestCredential:
    """Who asked for a release, as the run's parameters carry it."""

    requester: str
    issued_at: int
    signature: str

    def encode(self) -> str:
        return f"{self.requester}:{self.issued_at}:{self.signature}"

    @classmethod
    def decode(cls, text: str) -> "RequestCredential":
        try:
            requester, issued_at, signature = text.strip().split(":", 2)
            return cls(requester, int(issued_at), signature)
        except ValueError:
            raise CredentialError("A requester credential reads NAME:ISSUED_AT:SIGNATURE, as `fledge keys "
                                  "request MODEL CANDIDATE --key FILE` prints it.") from None


def sign_request(key: Ed25519PrivateKey, requester: str, model: str, candidate: str,
                 now: float | None = None) -> RequestCredential:
    issued_at = int(time.time() if now is None else now)
    return RequestCredential(requester, issued_at, sign(key, request_message(model, candidate, issued_at)))
