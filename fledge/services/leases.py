"""The leases this process holds on models (serving.gateway.leases), renewed while it works.

A release, a rollback or a promotion takes the model's lease from the serving plane before it
changes anything and holds it to the end; every route change it makes carries the lease's
fencing token (`connect_plane` fences the admin client of a model whose lease the current
context holds). A second operator is refused naming the holder; a rollback preempts a running
release, which then learns at its next change (or renewal) that its lease is lost and stops
without putting anything back: the state is the rollback's now.

The held lease lives in a context variable, so two flows run in one process (a release in a
thread, a rollback in another) each act under their own lease.
"""

from __future__ import annotations

import contextvars
import getpass
import os
import socket
import threading
from contextlib import contextmanager
from typing import Iterator

from serving.gateway.client import GatewayAdmin
from serving.gateway.leases import Lease, LeaseLost

LEASE_TTL_S = 60.0  # a holder that stops renewing (killed) loses its lease after this long

_HELD: contextvars.ContextVar[dict[str, "HeldLease"]] = contextvars.ContextVar("fledge_leases", default={})


def holder_name(what: str) -> str:
    return f"{what} by {getpass.getuser()}@{socket.gethostname()} (pid {os.getpid()})"


class HeldLease:
    """A lease on one model, renewed every third of its time to live from a daemon thread."""

    def __init__(self, admin: GatewayAdmin, lease: Lease, ttl_s: float):
        self.admin, self.lease, self.ttl_s = admin, lease, ttl_s
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"fledge-lease-{lease.model}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.lease = self.admin.renew_lease(self.lease, self.ttl_s)
            except LeaseLost as error:
                self.lost = str(error)
                return
            except Exception:  # the plane restarting: try again at the next beat, the lease outlives it
                continue

    def still_held(self) -> bool:
        """Asks the plane now: False once the lease is gone (preempted, broken, expired). A
        plane that does not answer (restarting) cannot say it is gone: still held."""
        if self.lost is None:
            try:
                self.lease = self.admin.renew_lease(self.lease, self.ttl_s)
            except LeaseLost as error:
                self.lost = str(error)
            except Exception:  # noqa: BLE001 - the plane down or restarting; the lease is kept there
                pass
        return self.lost is None

    def release(self) -> None:
        self._stop.set()
        if self.lost is None:
            try:
                self.admin.release_lease(self.lease)
            except Exception:  # gone already or the plane is down: it expires by itself
                pass


def held_lease(model: str) -> HeldLease | None:
    return _HELD.get().get(model)


@contextmanager
def holding(admin: GatewayAdmin, model: str, purpose: str, holder: str, preempt: bool = False,
            ttl_s: float = LEASE_TTL_S) -> Iterator[HeldLease]:
    """Hold MODEL's lease for the block (serving.gateway.leases.LeaseHeld when another holds
    it, unless `preempt`)."""
    held = HeldLease(admin, admin.acquire_lease(model, holder, purpose, ttl_s, preempt=preempt), ttl_s)
    token = _HELD.set({**_HELD.get(), model: held})
    try:
        yield held
    finally:
        _HELD.reset(token)
        held.release()
