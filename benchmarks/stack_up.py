"""How long the team stack takes to come up, and what it holds in memory.

Three `python -m fledge.stack up` runs against a fresh FLEDGE_HOME, each timed from the
command's start to its exit (every component healthy):

  cold      from nothing: initdb, both servers' schemas created, pools created, workers
  warm      everything already up and healthy: only checked (goal: about a second, no pid changed)
  restart   after `down`: the data is there, no process runs (databases migrated already)

Memory is the sum of the RSS of every process carrying the home's stack marker (PostgreSQL
with its backends, Prometheus, both servers with their uvicorn workers, both workers),
sampled every 0.25 s during the cold and restart runs and for --settle seconds after each:
the peak, and a per-component split after the cold run settled. RSS counts shared pages in every
process, so the sum overstates what the stack takes from the machine (PostgreSQL's shared
buffers, Python's shared libraries); it is the figure `ps` users see. Ends with `down --purge`.

The Debian packages must be installed first (scripts/stack-setup.sh; about 15 s with warm
apt caches, about 1 s when done); its time is not part of these figures.

    .venv/bin/python benchmarks/stack_up.py [--settle 10] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # noqa: E402

from fledge.stack import down, stack_processes  # noqa: E402
from fledge.stack.processes import rss_bytes  # noqa: E402
from fledge.stack.records import load  # noqa: E402
from fledge.stack.layout import StackLayout  # noqa: E402

MIB = 1024 * 1024


class Sampler:
    """The stack's summed RSS, sampled from a thread until stopped."""

    def __init__(self, home: Path, every_s: float = 0.25):
        self.home, self.every_s = home, every_s
        self.peak, self.samples = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(stack_processes(self.home)))
            self.samples += 1
            self._stop.wait(self.every_s)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()


def timed_up(home: Path) -> float:
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fledge.stack", "up", "--home", str(home)],
                            capture_output=True, text=True)
    seconds = time.monotonic() - began
    if result.returncode != 0:
        sys.exit(f"stack up failed ({seconds:.1f} s):\n{result.stdout}\n{result.stderr}")
    return seconds


def recorded_pids(home: Path) -> dict[str, int]:
    layout = StackLayout.of(home)
    return {name: c.pid for name, c in load(layout.state_file, layout.home.root).components.items()}


def by_component(home: Path) -> dict[str, int]:
    """RSS per component: each process counted for the recorded pid among its ancestors
    (PostgreSQL's backends call setsid, so process groups do not tell)."""
    leaders = {pid: name for name, pid in recorded_pids(home).items()}
    split: dict[str, int] = {}
    for process in stack_processes(home):
        try:
            chain = [process.pid] + [p.pid for p in process.parents()]
            owner = next((leaders[pid] for pid in chain if pid in leaders), "other")
            split[owner] = split.get(owner, 0) + process.memory_info().rss
        except psutil.Error:
            continue
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds of sampling after each up")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="fledge-stack-bench-")).resolve()
    figures: dict = {"home": str(home)}
    try:
        with Sampler(home) as cold:
            figures["cold_s"] = timed_up(home)
            time.sleep(args.settle)
        figures["cold_peak_rss_mib"] = cold.peak / MIB
        figures["steady_rss_mib"] = {k: v / MIB for k, v in sorted(by_component(home).items())}
        before = recorded_pids(home)
        figures["warm_s"] = timed_up(home)
        figures["warm_pids_unchanged"] = recorded_pids(home) == before
        down(home, log=lambda _: None)
        with Sampler(home) as restart:
            figures["restart_s"] = timed_up(home)
            time.sleep(args.settle)
        figures["restart_peak_rss_mib"] = restart.peak / MIB
    finally:
        down(home, purge=True, log=lambda _: None)
        shutil.rmtree(home, ignore_errors=True)  # the logs: nothing of the run is kept
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"stack up, cold (from nothing):   {figures['cold_s']:6.1f} s   peak RSS {figures['cold_peak_rss_mib']:6.0f} MiB")
    print(f"stack up, warm (all healthy):    {figures['warm_s']:6.1f} s   pids unchanged: {figures['warm_pids_unchanged']}")
    print(f"stack up, restart (data kept):   {figures['restart_s']:6.1f} s   peak RSS {figures['restart_peak_rss_mib']:6.0f} MiB")
    steady = figures["steady_rss_mib"]
    print(f"steady RSS {sum(steady.values()):.0f} MiB: " + ", ".join(f"{k} {v:.0f}" for k, v in steady.items()))


if __name__ == "__main__":
    main()
