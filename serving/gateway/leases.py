"""One operator at a time per model: leases the serving plane holds and hands out through its
admin API, so a release, a rollback or a promotion on any host takes them the same way.

A lease has a holder (who, for what, from where), an expiry the holder renews while it works,
and a fencing token: a number that only grows, per model. Every route change a holder makes
carries its token (`x-fledge-fence: MODEL:TOKEN`); once its lease is gone (expired, broken by
an operator, preempted by a rollback) the gateway refuses its changes, so a release that was
preempted can never undo what preempted it. Times are the monotonic clock (never stepped);
leases are saved in the state directory, so a restarted plane keeps them (their expiry then
counts from the restart). A lease whose holder ran on this host and has exited is over at
once: a killed release's re-run need not wait out the lease.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict

from fledge.core.errors import FledgeError
from fledge.core.state import write_atomic

FENCE_HEADER = "x-fledge-fence"


class LeaseHeld(FledgeError):
    """Someone else holds the model's lease; the message names who, what for and since when."""

    def __init__(self, message: str, lease: "Lease"):
        super().__init__(message)
        self.lease = lease


class LeaseLost(FledgeError):
    """The caller's lease is gone (expired, broken, preempted): it must stop acting on the model."""


class Lease(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    holder: str  # who, e.g. "release of m/3 (flow run 1a2b) by alice@host"
    purpose: str  # release | rollback | promote | ...
    token: int  # the fencing token
    since: float  # wall-clock epoch, for people to read
    expires: float  # monotonic
    host: str | None = None  # where the holder runs, and its pid: a holder on this host that exited holds nothing
    pid: int | None = None
    ended: str | None = None  # why it ended early (broken, preempted), kept for the holder to learn

    def holder_exited(self) -> bool:
        if self.host != socket.gethostname() or not self.pid:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def held_by(lease: Lease) -> str:
    """Who holds a model, in the words every refusal uses."""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.since))
    return (f"{lease.model} is held by {lease.holder} ({lease.purpose}) since {since} (lease {lease.token}). Wait for "
            f"it to finish, or break the lease if its holder is gone: `fledge lease break {lease.model}`.")


class LeaseTable:
    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic):
        self.path, self.clock = path, clock
        self._lock = threading.Lock()
        self.leases: dict[str, Lease] = {}
        self.tokens: dict[str, int] = {}
        self._ended: dict[str, Lease] = {}  # the last lease that ended early, per model: its holder learns why
        if path.is_file():
            saved = json.loads(path.read_text())
            self.tokens = {k: int(v) for k, v in saved.get("tokens", {}).items()}
            # A restarted plane cannot know how long it was down: held leases get their TTL again.
            for model, lease in saved.get("leases", {}).items():
                ttl = float(lease.pop("ttl_s", 60.0))
                self.leases[model] = Lease.model_validate({**lease, "expires": self.clock() + ttl})

    def _save(self) -> None:
        now = self.clock()
        leases = {m: {**lease.model_dump(), "ttl_s": max(1.0, lease.expires - now)} for m, lease in self.leases.items()}
        write_atomic(self.path, json.dumps({"tokens": self.tokens, "leases": leases}, indent=1), mode=0o600)

    def current(self, model: str) -> Lease | None:
        lease = self.leases.get(model)
        if lease is None or lease.expires <= self.clock() or lease.holder_exited():
            return None
        return lease

    def acquire(self, model: str, holder: str, purpose: str, ttl_s: float, preempt: bool = False,
                host: str | None = None, pid: int | None = None) -> Lease:
        """A new lease on `model`, or LeaseHeld naming the holder. `preempt` (a rollback) takes
        it from a live holder, whose token is then refused."""
        with self._lock:
            held = self.current(model)
            if held is not None and not preempt:
                raise LeaseHeld(held_by(held), held)
            token = self.tokens.get(model, 0) + 1
            self.tokens[model] = token
            lease = Lease(model=model, holder=holder, purpose=purpose, token=token, since=time.time(),
                          expires=self.clock() + ttl_s, host=host, pid=pid)
            if held is not None:
                self._ended[model] = held.model_copy(update={"ended": f"preempted by {holder} ({purpose})"})
            self.leases[model] = lease
            self._save()
            return lease

    def check(self, model: str, token: int) -> Lease:
        """The live lease with this token, or LeaseLost saying why not."""
        held = self.current(model)
        if held is not None and held.token == token:
            return held
        ended = self._ended.get(model)
        if ended is not None and ended.token == token:
            raise LeaseLost(f"the lease {token} on {model} was {ended.ended}")
        if held is not None:
            raise LeaseLost(f"the lease {token} on {model} is no longer held: {held.holder} holds lease {held.token}")
        raise LeaseLost(f"the lease {token} on {model} expired (its holder did not renew it in time)")

    def renew(self, model: str, token: int, ttl_s: float) -> Lease:
        with self._lock:
            lease = self.check(model, token).model_copy(update={"expires": self.clock() + ttl_s})
            self.leases[model] = lease
            self._save()
            return lease

    def release(self, model: str, token: int) -> None:
        with self._lock:
            held = self.current(model)
            if held is not None and held.token == token:
                del self.leases[model]
                self._save()

    def break_lease(self, model: str, by: str) -> Lease | None:
        """An operator ends the lease whoever holds it; returns the lease that was broken."""
        with self._lock:
            held = self.current(model)
            if held is None:
                return None
            self._ended[model] = held.model_copy(update={"ended": f"broken by {by}"})
            del self.leases[model]
            self.tokens[model] = self.tokens.get(model, 0) + 1  # nothing issued before counts any more
            self._save()
            return held
