"""A server's process group seen from outside: alive or not, and stopping it."""

from __future__ import annotations

import os
import signal
import time


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def stop_group(pid: int, grace_s: float) -> bool:
    """SIGTERM to a guardian (which stops its group gracefully), SIGKILL to the group after
    the grace. False when it was not running."""
    if not alive(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return True
    end = time.monotonic() + grace_s + 5
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True
