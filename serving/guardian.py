"""Keeps a server process from outliving what owns it.

Run as `python -m serving.guardian PARENT_PID [--record INSTANCES_JSON KEY] -- COMMAND...`. It
becomes the leader of a new process group, starts COMMAND in that group, and when its owner
is gone it terminates the whole group: the server and every worker process it spawned.

The owner is the fleet's instance record when one is named (`--record`): once the record
`KEY` in INSTANCES_JSON names this guardian, the server lives exactly as long as the record
does and its lease holds (serving.fleet), whatever process started it; a gateway that crashes
or restarts leaves it serving. Until the record names it (the server is still starting, the
record is written once it is ready), and always without `--record`, the owner is PARENT_PID:
its death (even by SIGKILL, which no handler in it can catch) stops the group. A polling
watchdog is used rather than PR_SET_PDEATHSIG because that signal fires when the *thread*
that forked exits, and orchestrators start servers from short-lived worker threads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5


class RecordOwner:
    """Ownership by the fleet's record: `alive()` while the record under `key` names this
    guardian's pid and its lease (the monotonic clock, which never steps) has not lapsed;
    before the record first names it, while the starter lives."""

    def __init__(self, instances: Path, key: str, starter: int, started_by: int | None):
        self.instances, self.key, self.starter, self.started_by = Path(instances), key, starter, started_by
        self.seen = False

    def _record(self) -> dict | None:
        try:
            return json.loads(self.instances.read_text()).get(self.key)
        except (OSError, ValueError):  # written by atomic rename: unreadable only while absent
            return None

    def alive(self) -> bool:
        record = self._record()
        mine = record is not None and record.get("pid") == os.getpid()
        if mine:
            self.seen = True
            lease = record.get("lease_expires")
            return lease is None or lease > time.monotonic()
        if self.seen:
            return False  # removed (stopped on purpose) or replaced by another instance
        return _alive(self.starter, self.started_by)

    def why_stopped(self) -> str:
        return f"instance record {self.key} removed, replaced or its lease lapsed" if self.seen else "its starter exited"


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


def supervise(child, parent: int, grace_s: float, started_by: int | None = None,
              record: tuple[str, str] | None = None) -> int:
    """Run until `child` (anything with Popen's `poll()`) exits or its owner is gone; then stop
    the group. The owner is `record` (INSTANCES_JSON, KEY) once it names this guardian, else
    `parent`. `started_by`: the process that started this guardian, whose death shows as
    re-parenting even if its pid is reused (None where the starter is not the owner)."""
    owner = RecordOwner(Path(record[0]), record[1], parent, started_by) if record else None

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
        if not (owner.alive() if owner else _alive(parent, started_by)):
            if owner:
                _note(f"fledge guardian: stopping the server: {owner.why_stopped()}")
            _terminate_group(grace_s, child)
            return 0
        time.sleep(POLL_S)


def main(argv: list[str]) -> int:
    parent = int(argv[0])
    separator = argv.index("--")
    options = argv[1:separator]
    record = (options[1], options[2]) if options[:1] == ["--record"] else None
    command = argv[separator + 1 :]
    grace_s = float(os.environ.get("FLEDGE_STOP_GRACE_S", "20"))
    child = subprocess.Popen(command)  # inherits our group: killpg reaches it and its workers
    # The owner may be another process than the one that started the guardian (a serving
    # plane owns the servers a short-lived flow run starts); re-parenting means death only for
    # the starter.
    return supervise(child, parent, grace_s, started_by=os.getppid(), record=record)


def _note(line: str) -> None:
    """A line in the server's log; never in the way of stopping (the log may be a dead pipe)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


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
