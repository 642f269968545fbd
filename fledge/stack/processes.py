"""The stack's processes: started detached, found again, measured and stopped.

Each component is started in a session (and process group) of its own, so the shell or test
that ran `up` can exit, or be interrupted, without taking the stack down. Every process gets
FLEDGE_STACK_MEMBER=<home> in its environment, inherited by everything it starts; that marker
is how `down` finds a process that left its group (and how tests prove none is left), and it
is never exported to a user's shell, so nothing else carries it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MARKER = "FLEDGE_STACK_MEMBER"

_started: dict[int, subprocess.Popen] = {}  # children of this process: reaped once they exit


@dataclass(frozen=True)
class LaunchSpec:
    """How a component is started. `env` holds what the stack sets; the inherited environment
    (cleaned of settings that would point the component elsewhere) is added at launch."""

    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    user: str | None = None  # run as this user (PostgreSQL refuses to run as root)

    def digest(self) -> str:
        """Changes when anything that makes the component behave differently changes."""
        import hashlib
        import json

        blob = json.dumps([self.cmd, sorted(self.env.items()), str(self.cwd), self.user])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Settings a component must not inherit from the caller's shell: each says which server,
# home or profile to use, and the stack decides those itself.
_NOT_INHERITED = ("PREFECT_", "MLFLOW_", "FLEDGE_", "PG")


def launch_env(spec: LaunchSpec, home: Path) -> dict[str, str]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(_NOT_INHERITED)}
    return {**inherited, **spec.env, MARKER: str(home)}


def spawn(spec: LaunchSpec, home: Path, log: Path) -> int:
    """Start `spec` detached, its output appended to `log`; returns the pid (= its group id)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n=== fledge stack: starting at {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(spec.cmd)}\n".encode())
        out.flush()
        as_user = {}
        if spec.user is not None and os.geteuid() == 0:
            as_user = {"user": spec.user, "group": spec.user, "extra_groups": []}
        process = subprocess.Popen(
            spec.cmd, cwd=spec.cwd, env=launch_env(spec, home), stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True, **as_user)
    _started[process.pid] = process
    return process.pid


def _reap() -> None:
    for pid, process in list(_started.items()):
        if process.poll() is not None:
            del _started[pid]


def alive(pid: int | None) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped) does not count."""
    if not pid:
        return False
    _reap()
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def exit_code(pid: int) -> int | None:
    """The exit status of a child of this process that has exited, else None."""
    process = _started.get(pid)
    return None if process is None else process.poll()


def group_members(pgid: int) -> list[int]:
    members = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.info["pid"]) == pgid:
                members.append(process.info["pid"])
        except (ProcessLookupError, psutil.Error):
            continue
    return members


def _within(path: str, roots: tuple[Path, ...]) -> bool:
    return any(path == str(root) or path.startswith(f"{root}/") for root in roots)


def members_of(home: Path, clusters: tuple[Path, ...] = ()) -> list[psutil.Process]:
    """Every live process carrying this home's stack marker, or a PostgreSQL process working
    in one of the stack's `clusters` (root sees all users' processes). PostgreSQL's backends
    write their ps title over the memory that held the environment, so the marker cannot be
    read back from them; each works in its cluster's data directory instead."""
    want = str(home)
    found = []
    for process in psutil.process_iter(["pid", "status"]):
        if process.info["pid"] == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if process.environ().get(MARKER) == want or (
                    clusters and process.name() == "postgres" and _within(process.cwd(), clusters)):
                found.append(process)
        except psutil.Error:  # gone, or another user's process (not ours to see)
            continue
    return found


def rss_bytes(processes: list[psutil.Process]) -> int:
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


def stop_group(pid: int, stop_signal: int = signal.SIGTERM, grace_s: float = 10.0) -> bool:
    """Ask the group leader to stop (it stops its own children in order: PostgreSQL's postmaster
    its backends, uvicorn its workers), wait up to `grace_s` for the whole group to end, then
    SIGKILL what is left of the group. False when nothing of it was running."""
    leader = alive(pid)
    if not leader and not group_members(pid):
        return False
    try:  # a leader that died (kill -9) leaves its children: they are asked instead
        os.kill(pid, stop_signal) if leader else os.killpg(pid, stop_signal)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (alive(pid) or group_members(pid)):
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    end = time.monotonic() + 5
    while time.monotonic() < end and (alive(pid) or group_members(pid)):
        time.sleep(0.05)
    return True


def stop_processes(processes: list[psutil.Process], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after the grace, to processes that left their component's group."""
    for process in processes:
        try:
            process.terminate()
        except psutil.Error:
            pass
    _, left = psutil.wait_procs(processes, timeout=grace_s)
    for process in left:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(left, timeout=5)
    _reap()
