"""One operator at a time: the lease table's rules, on an injected clock."""

import os
import subprocess
import sys

import pytest

from serving.gateway.leases import LeaseHeld, LeaseLost, LeaseTable


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def table(tmp_path):
    clock = Clock()
    return LeaseTable(tmp_path / "leases.json", clock=clock), clock


def test_a_second_operator_is_refused_naming_the_holder_and_since_when(table):
    leases, _ = table
    leases.acquire("m", "release of m/3 by alice", "release", ttl_s=60)
    with pytest.raises(LeaseHeld, match=r"m is held by release of m/3 by alice \(release\) since \d{4}-\d\d-\d\d"):
        leases.acquire("m", "release of m/3 by bob", "release", ttl_s=60)
    leases.acquire("other", "release of other/2", "release", ttl_s=60)  # one lease per model


def test_a_lease_its_holder_stops_renewing_expires(table):
    leases, clock = table
    first = leases.acquire("m", "a", "release", ttl_s=60)
    clock.now += 30
    leases.renew("m", first.token, ttl_s=60)
    clock.now += 59
    with pytest.raises(LeaseHeld):
        leases.acquire("m", "b", "release", ttl_s=60)
    clock.now += 2
    second = leases.acquire("m", "b", "release", ttl_s=60)
    assert second.token > first.token
    with pytest.raises(LeaseLost, match="no longer held"):
        leases.renew("m", first.token, ttl_s=60)


def test_a_rollback_preempts_and_the_preempted_holder_learns_why(table):
    leases, _ = table
    release = leases.acquire("m", "release of m/3", "release", ttl_s=60)
    rollback = leases.acquire("m", "rollback by alice", "rollback", ttl_s=60, preempt=True)
    assert leases.check("m", rollback.token).holder == "rollback by alice"
    with pytest.raises(LeaseLost, match=r"preempted by rollback by alice \(rollback\)"):
        leases.check("m", release.token)


def test_an_operator_can_break_a_lease_and_nothing_issued_before_counts(table):
    leases, _ = table
    held = leases.acquire("m", "release of m/3", "release", ttl_s=600)
    assert leases.break_lease("m", "bob").token == held.token
    with pytest.raises(LeaseLost, match="broken by bob"):
        leases.check("m", held.token)
    assert leases.acquire("m", "next", "release", ttl_s=60).token == held.token + 2


def test_a_holder_on_this_host_that_exited_holds_nothing(table):
    import socket

    leases, _ = table
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    leases.acquire("m", "killed release", "release", ttl_s=600, host=socket.gethostname(), pid=gone.pid)
    assert leases.current("m") is None
    leases.acquire("m", "alive", "release", ttl_s=600, host=socket.gethostname(), pid=os.getpid())
    with pytest.raises(LeaseHeld):
        leases.acquire("m", "third", "release", ttl_s=600)


def test_a_restarted_plane_keeps_the_leases_and_the_token_sequence(tmp_path):
    clock = Clock()
    first = LeaseTable(tmp_path / "leases.json", clock=clock)
    held = first.acquire("m", "release", "release", ttl_s=60)
    again = LeaseTable(tmp_path / "leases.json", clock=Clock())
    assert again.check("m", held.token).holder == "release"
    again.release("m", held.token)
    assert again.acquire("m", "next", "release", ttl_s=60).token == held.token + 1
    assert oct((tmp_path / "leases.json").stat().st_mode & 0o777) == "0o600"
