"""Waiting for a component to answer, and saying clearly why it did not."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import httpx

from fledge.stack.errors import StackError
from fledge.stack.processes import alive, exit_code


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def log_tail(log: Path, lines: int = 15) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log yet)"
    return "\n".join("    " + line for line in text[-lines:])


def wait_healthy(name: str, pid: int, check: Callable[[], bool], timeout_s: float, log: Path,
                 what: str) -> float:
    """Poll `check` until it passes; returns the seconds waited. Raises when the process exits
    first or the timeout passes, naming the log and showing its last lines."""
    began = time.monotonic()
    delay = 0.05
    while True:
        if check():
            return time.monotonic() - began
        if not alive(pid):
            code = exit_code(pid)
            raise StackError(
                f"The stack's {name} exited{f' with status {code}' if code is not None else ''} before it was healthy "
                f"({what}). Read its log, {log}; its last lines:\n{log_tail(log)}\n"
                "Fix the cause, then run `python -m fledge.stack up` again.")
        if time.monotonic() - began > timeout_s:
            raise StackError(
                f"The stack's {name} (pid {pid}) was not healthy after {timeout_s:.0f} s ({what}). Read its log, {log}; "
                f"its last lines:\n{log_tail(log)}\nA slow machine may need more time: FLEDGE_STACK_TIMEOUT_S=600 "
                "`python -m fledge.stack up` (it leaves what is healthy running and waits for what is still starting).")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
