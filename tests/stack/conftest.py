"""One team stack for the whole session, brought up from nothing in a temporary FLEDGE_HOME
and taken down (with its data) at the end, when no process it started may be left.

The cold `up` runs as `python -m fledge.stack up` in a child process that exits before any
test runs: the stack outliving the command that started it is part of what is tested.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "stack-setup.sh"
BINARIES = [Path("/usr/lib/postgresql/15/bin/postgres"), Path("/usr/bin/prometheus")]
CLIENTS = ["psycopg2", "asyncpg"]


def _missing() -> list[str]:
    from importlib.util import find_spec

    return [str(b) for b in BINARIES if not b.is_file()] + [m for m in CLIENTS if find_spec(m) is None]


def _ensure_installed() -> None:
    """Install what is missing with the stack's own setup; skip only when that cannot."""
    if not _missing():
        return
    result = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
    import importlib

    importlib.invalidate_caches()
    still = _missing()
    if still:
        pytest.skip(f"the team stack needs {', '.join(still)}, and scripts/stack-setup.sh could not install them "
                    f"(status {result.returncode}): {(result.stderr or result.stdout).strip()[-400:]}")


@dataclass
class Stack:
    home: Path
    cold_up_s: float
    cold_up_output: str
    plane_up_s: float | None = None  # `up --serve`: the plane's start, its champion's vLLM included

    @property
    def layout(self):
        from fledge.stack.layout import StackLayout

        return StackLayout.of(self.home)

    def record(self):
        from fledge.stack.records import load

        return load(self.layout.state_file, self.layout.home.root)

    def pids(self) -> dict[str, int]:
        return {name: c.pid for name, c in self.record().components.items()}

    def url(self, component: str) -> str:
        return f"http://127.0.0.1:{self.record().ports[component]}"


@pytest.fixture(scope="session")
def stack(tmp_path_factory) -> Stack:
    _ensure_installed()
    from fledge.stack import down, leftover_pids

    home = tmp_path_factory.mktemp("stack-home").resolve()  # under /tmp; PostgreSQL's cluster under /var/lib
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fledge.stack", "up", "--home", str(home)], capture_output=True,
                            text=True, timeout=300, cwd=ROOT)
    seconds = time.monotonic() - began
    stack = Stack(home=home, cold_up_s=seconds, cold_up_output=result.stdout + result.stderr)
    seen: set[int] = set(stack.pids().values())
    try:
        assert result.returncode == 0, f"stack up failed after {seconds:.0f} s:\n{stack.cold_up_output}"
        yield stack
        seen |= set(stack.pids().values())
    finally:
        down(home, purge=True, log=lambda _: None)
        left = leftover_pids(home, pids=sorted(seen))
        assert not left, f"processes of the stack left after down: {left}"
