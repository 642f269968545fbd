"""Keeps a server process from outliving the program that started it.

Run as `python -m serving.guardian PARENT_PID -- COMMAND...`. It becomes the leader of a new
process group, starts COMMAND in that group, and when PARENT_PID dies (even by SIGKILL, which
no handler in the parent can catch) it terminates the whole group: the server and every worker
process it spawned. A polling watchdog is used rather than PR_SET_PDEATHSIG because that
signal fires when the *thread* that forked exits, and orchestrators start servers from
short-lived worker threads.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_S = 0.5


def _terminate_group(grace_s: float, child: subprocess.Popen) -> None:
    group = os.getpgrp()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + grace_s
    while time.monotonic() < end:
        time.sleep(0.2)
        child.poll()  # reap it, or it lingers as a zombie in the group
        # Only this guardian left in the group means everything else exited cleanly.
        if _group_size(group) <= 1:
            return
    os.killpg(group, signal.SIGKILL)


def _group_size(group: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == group and fields[0] != "Z":
                    count += 1
            except (OSError, IndexError, ValueError):
                continue
    return count


def supervise(child, parent: int, grace_s: float, started_by: int | None = None) -> int:
    """Run until `child` (anything with Popen's `poll()`) exits or `parent` dies; then stop the
    group. `started_by`: the process that started this guardian, whose death shows as
    re-parenting even if its pid is reused (None where the starter is not the owner)."""

    def on_term(signum, frame):
        _terminate_group(grace_s, child)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    while True:
        code = child.poll()
        if code is not None:
            _terminate_group(2.0, child)  # the server is gone: take stray workers with it
            return code
        if not _alive(parent, started_by):
            _terminate_group(grace_s, child)
            return 0
        time.sleep(POLL_S)


def main(argv: list[str]) -> int:
    parent = int(argv[0])
    command = argv[argv.index("--") + 1 :]
    grace_s = float(os.environ.get("FLEDGE_STOP_GRACE_S", "20"))
    child = subprocess.Popen(command)  # inherits our group: killpg reaches it and its workers
    # The owner may be another process than the one that started the guardian (a serving
    # plane owns the servers a short-lived flow run starts); re-parenting means death only for
    # the starter.
    return supervise(child, parent, grace_s, started_by=os.getppid())


def _alive(pid: int, started_by: int | None) -> bool:
    if pid == started_by and os.getppid() != pid:  # re-parented: the parent died
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
