"""A fault matrix you can rerun: each fault injected under synthetic users against real vLLM on
CPU, one table at the end.

One Fledge home, the zoo's `base` as champion and `improved` as the candidate, a short test
policy (two canary steps of 8 s, an 8 s watch), the serving plane (`fledge gateway`: gateway +
rollout controller) and every release, rollback and promotion in processes of their own, as an
operator runs them, so each can be killed with SIGKILL. Users alternate streamed and plain
requests through the gateway. After each trial the state is checked: the registry's champion
is the gateway's stable backend, every backend with a share has a live, healthy instance at
its URL, every instance record has its server and every vLLM server of the home has a record
(no orphan), no rollout or release is left running. Between trials base is made champion again.

Columns: client requests failed (plain / streamed) from the fault to the end of the trial,
whether the end state is consistent, orphan processes, and seconds from the fault to a safe
state (all traffic on versions that answer; "-" where users never met an unsafe state).

    .venv/bin/python benchmarks/fault_matrix.py --quick          # one trial of each fault
    .venv/bin/python benchmarks/fault_matrix.py --trials 3 --only canary-vllm-killed,plane-restarted

The clock-step rows restart the plane with benchmarks/wall_clock_fault/ on its PYTHONPATH: its
`time.time()` is stepped by ±10 minutes mid-canary, its monotonic clock left alone (as an NTP
step leaves CLOCK_MONOTONIC).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import openai  # noqa: E402
import yaml  # noqa: E402

from fledge.core.home import FledgeHome  # noqa: E402
from fledge.core.policy import DEFAULT_POLICY_PATH, load_policy  # noqa: E402

MODEL = "faults"
WALL_CLOCK_FAULT = Path(__file__).resolve().parent / "wall_clock_fault"  # its sitecustomize steps time.time()


def write_policy(path: Path, approval_required: bool = False) -> str:
    data = yaml.safe_load(DEFAULT_POLICY_PATH.with_name("demo.yaml").read_text())
    data["performance"]["tolerated_slowdown"] = 0.5  # the matrix is about faults, not the gate's calibration
    data["canary"].update(steps=[50, 100], bake_seconds=8, analysis_interval_seconds=0.5, min_samples=10,
                          progress_deadline_seconds=60)
    data["watch"].update(window_seconds=8, min_samples=10)
    # The matrix re-runs a release killed at its approval with --auto-approve: its policy permits that.
    data["approval"] = {"required": approval_required, "approvers": [], "timeout_seconds": 600,
                        "allow_auto_approve": True}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_policy(path)
    return str(path)


def kill(process: subprocess.Popen) -> None:
    """SIGKILL to its process group, and reaped (as its shell would): a zombie still looks alive."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class Users:
    """Three users, each alternating a plain and a streamed completion through the gateway."""

    def __init__(self, url: str, users: int = 3):
        self.url, self.users = url, users
        self.events: list[tuple[float, bool, bool, str]] = []  # (monotonic, streamed, ok, why)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._user, args=(i,), daemon=True) for i in range(users)]

    def _user(self, index: int) -> None:
        client = openai.OpenAI(base_url=f"{self.url}/v1", api_key="faults", max_retries=0, timeout=30)
        count = index
        while not self._stop.is_set():
            count += 1
            streamed = count % 2 == 0
            why = ""
            try:
                answer = client.completions.create(model=MODEL, prompt="Q: What is 2 plus 3?\nA:", max_tokens=6,
                                                   temperature=0, stream=streamed)
                if streamed:
                    for _ in answer:
                        pass
            except openai.APIStatusError as error:
                why = f"HTTP {error.status_code}"
            except openai.APIError as error:
                why = type(error).__name__
            self.events.append((time.monotonic(), streamed, not why, why))
            if why:
                time.sleep(0.2)
            self._stop.wait(0.15)

    def failed(self, since: float, until: float | None = None) -> tuple[int, int]:
        until = until or time.monotonic()
        window = [e for e in self.events if since <= e[0] <= until and not e[2]]
        return sum(1 for e in window if not e[1]), sum(1 for e in window if e[1])

    def start(self) -> "Users":
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=35)


@dataclass
class Trial:
    fault: str
    failed_plain: int = 0
    failed_streamed: int = 0
    problems: list[str] = field(default_factory=list)
    orphans: int = 0
    seconds_to_safe: float | None = None
    note: str = ""


class Stack:
    def __init__(self, root: Path, zoo):
        from fledge.services.context import open_registry
        from registry.refs import CHALLENGER, CHAMPION

        self.root = root
        self.home = FledgeHome(root / "home").ensure()
        self.env = {**os.environ, "FLEDGE_HOME": str(self.home.root)}
        self.registry = open_registry(self.home)
        base, _ = self.registry.register_once(zoo["base"].path, MODEL, alias=CHAMPION)
        improved, _ = self.registry.register_once(zoo["improved"].path, MODEL, alias=CHALLENGER)
        self.base, self.improved = base, improved
        self.policy = write_policy(root / "policy.yaml")
        self.ask_policy = write_policy(root / "ask.yaml", approval_required=True)
        self.port = 18000 + os.getpid() % 1000
        self.url = f"http://127.0.0.1:{self.port}"
        self.plane: subprocess.Popen | None = None
        self.logs = root / "logs"
        self.logs.mkdir()
        self.count = 0
        self.spawned: list[subprocess.Popen] = []

    # ---- processes ---------------------------------------------------------------------------

    def _spawn(self, name: str, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
        self.count += 1
        log = self.logs / f"{self.count:02d}-{name}.log"
        process = subprocess.Popen([sys.executable, "-m", "fledge.cli.main", *args], env=env or self.env,
                                   stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        self.spawned.append(process)
        return process, log

    def kill_leftovers(self) -> None:
        for process in self.spawned:
            if process.poll() is None:
                kill(process)

    def start_plane(self, wall_clock_file: Path | None = None) -> float:
        env = dict(self.env)
        if wall_clock_file is not None:
            env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(WALL_CLOCK_FAULT), env.get("PYTHONPATH")])),
                       FLEDGE_FAULT_WALL_OFFSET_FILE=str(wall_clock_file))
        started = time.monotonic()
        self.plane, _ = self._spawn("plane", "gateway", MODEL, "--port", str(self.port), "--policy", self.policy, env=env)
        self.wait_for(self._ready, 300, "the plane to answer")
        return time.monotonic() - started

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def kill_plane(self) -> None:
        os.kill(self.plane.pid, signal.SIGKILL)  # the plane only: the vLLM servers have their own groups
        self.plane.wait()

    def stop_plane(self) -> None:
        if self.plane and self.plane.poll() is None:
            self.plane.send_signal(signal.SIGINT)
            try:
                self.plane.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.plane.kill()

    def release(self, policy: str | None = None, *extra: str) -> tuple[subprocess.Popen, Path]:
        return self._spawn("release", "release", MODEL, "--version", self.improved.version,
                           "--policy", policy or self.policy, *extra)

    def admin(self):
        from serving.gateway.client import GatewayAdmin
        from serving.gateway.server import admin_token

        return GatewayAdmin(self.url, admin_token(self.home.state))

    # ---- observing ---------------------------------------------------------------------------

    @staticmethod
    def wait_for(condition: Callable[[], object], timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                found = condition()
            except Exception:  # noqa: BLE001 - a plane restarting, a file half-written: look again
                found = None
            if found:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"waited {timeout_s:.0f} s for {what}")

    def traffic(self) -> dict[str, int]:
        table = self.admin().routes()
        return {key: b.weight for key, b in table.backends.items() if not b.draining}

    def canary_at(self, weight: int) -> bool:
        return self.traffic().get(self.improved.ref) == weight

    def rollout(self) -> dict | None:
        return self.admin().rollout(MODEL)

    def records(self):
        from serving.fleet import Fleet
        from serving.launcher import LocalLauncher

        return Fleet(self.home.state, LocalLauncher(self.home.logs)).records()

    def vllm_groups(self) -> set[int]:
        """Process groups of live vLLM servers of this home (their command lines name its checkpoints)."""
        groups = set()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if "vllm" in cmdline and str(self.home.root) in cmdline:
                    groups.add(os.getpgid(int(proc.name)))
            except (OSError, ProcessLookupError):
                continue
        return groups

    def check(self, trial: Trial) -> Trial:
        """The end state: aliases <-> routes <-> live instances <-> rollout state, and orphans."""
        from registry.refs import CHAMPION
        from serving.processes import alive

        problems = trial.problems
        champion = f"{MODEL}/{self.registry.aliases(MODEL)[CHAMPION]}"
        table = self.admin().routes()
        stable = table.stable() if table else None
        if stable is None or stable.version != champion:
            problems.append(f"the gateway's stable is {stable.version if stable else None}, the champion {champion}")
        records = self.records()
        for key, backend in (table.backends.items() if table else []):
            if backend.weight == 0:
                continue
            record = records.get(key)
            if record is None or record.base_url != backend.base_url:
                problems.append(f"{key} has {backend.weight} % and no instance at {backend.base_url}")
                continue
            try:
                healthy = httpx.get(backend.base_url.removesuffix("/v1") + "/health", timeout=5).status_code == 200
            except httpx.HTTPError:
                healthy = False
            if not healthy:
                problems.append(f"{key} has {backend.weight} % and fails its health check")
        hosts = {r.pid for r in records.values() if r.adapter_of is None}
        problems += [f"the record of {k} has no live server" for k, r in records.items() if not alive(r.pid)]
        trial.orphans = len(self.vllm_groups() - hosts)
        rollout = self.rollout()
        if rollout is not None and rollout["end"] is None:
            problems.append(f"a rollout is still running: {rollout['description']}")
        if self.home.files.release(MODEL).is_file():
            problems.append("a release record is left")
        return trial

    # ---- between trials ----------------------------------------------------------------------

    def reset(self) -> None:
        """base champion with all traffic, improved the challenger, nothing running."""
        from registry.refs import CHALLENGER, CHAMPION, PREVIOUS

        if not self._ready():
            self.start_plane()
        self.wait_for(lambda: (self.rollout() or {"end": "none"})["end"] is not None, 300, "the rollout to end")
        if self.home.files.release(MODEL).is_file():  # a trial's release left unfinished: finish it
            process, _ = self.release()
            process.wait(timeout=900)
        if self.registry.aliases(MODEL)[CHAMPION] != self.base.version:
            self.registry.set_alias(MODEL, PREVIOUS, self.base.version)
            process, log = self._spawn("reset", "rollback", MODEL, "--reason", "fault matrix: base again")
            if process.wait(timeout=600) != 0:
                raise RuntimeError(f"could not make base the champion again: {log.read_text()[-2000:]}")
        self.registry.set_alias(MODEL, CHALLENGER, self.improved.version)


# ---- the faults ----------------------------------------------------------------------------------

def _judge(stack: Stack, trial: Trial, since: float) -> Trial:
    """Once no rollout runs: the users' failures since the fault, and the end state."""
    stack.wait_for(lambda: (stack.rollout() or {"end": "none"})["end"] is not None, 300, "the rollout to end")
    trial.failed_plain, trial.failed_streamed = stack.users.failed(since)
    return stack.check(trial)


def _finish_release(stack: Stack, trial: Trial, since: float) -> Trial:
    """Run the release again (it continues the killed one) and judge the end."""
    process, log = stack.release()
    code = process.wait(timeout=900)
    trial.note = f"re-run exit {code}"
    return _judge(stack, trial, since)


def killed_while_evaluating(stack: Stack) -> Trial:
    trial = Trial("release killed while evaluating")
    process, log = stack.release()
    stack.wait_for(lambda: "evaluate safety" in log.read_text(), 600, "the evaluation to start")
    since = time.monotonic()
    kill(process)
    if stack.traffic() != {stack.base.ref: 100}:
        trial.problems.append(f"traffic changed before any canary: {stack.traffic()}")
    return _finish_release(stack, trial, since)


def killed_awaiting_approval(stack: Stack) -> Trial:
    trial = Trial("release killed awaiting approval")
    process, log = stack.release(stack.ask_policy)
    stack.wait_for(lambda: "Waiting for approval" in log.read_text(), 900, "the approval form")
    since = time.monotonic()
    kill(process)
    if stack.traffic() != {stack.base.ref: 100}:
        trial.problems.append(f"traffic changed before the approval: {stack.traffic()}")
    process, _ = stack.release(stack.ask_policy, "--auto-approve")  # the next run takes the staging servers over
    trial.note = f"re-run exit {process.wait(timeout=900)}"
    trial.failed_plain, trial.failed_streamed = stack.users.failed(since)
    return stack.check(trial)


def killed_during_rollout(stack: Stack, fault: str, reached: Callable[[], bool], what: str) -> Trial:
    """The release killed once its rollout `reached` a point: the controller must end the
    rollout alone; the re-run then only finishes the records."""
    trial = Trial(fault)
    process, _ = stack.release()
    stack.wait_for(reached, 900, what)
    since = time.monotonic()
    kill(process)
    ended = stack.wait_for(lambda: (r := stack.rollout()) and r["end"] and r, 300, "the controller to end it")
    finished = _finish_release(stack, trial, since)
    finished.note = f"controller: {ended['end']} with no release process; {finished.note}"
    return finished


def plane_restarted(stack: Stack) -> Trial:
    trial = Trial("gateway/controller killed mid-canary")
    process, _ = stack.release()
    stack.wait_for(lambda: stack.canary_at(50), 900, "the 50 % step")
    since = time.monotonic()
    stack.kill_plane()
    stack.start_plane()  # at once, as a supervisor (systemd's Restart=always, a Kubernetes pod) restarts it
    ready = time.monotonic()  # the gateway answers again: the down window ends here, not at the restart
    trial.seconds_to_safe = ready - since
    code = process.wait(timeout=900)  # the release waited the plane out
    down_plain, down_streamed = stack.users.failed(since, ready + 0.5)
    trial.failed_plain, trial.failed_streamed = stack.users.failed(ready + 0.5)
    trial.note = f"release exit {code}; while down: {down_plain}/{down_streamed} failed (expected)"
    return stack.check(trial)


def canary_vllm_killed(stack: Stack) -> Trial:
    trial = Trial("the canary's vLLM killed")
    process, _ = stack.release()
    stack.wait_for(lambda: stack.canary_at(50), 900, "the 50 % step")
    record = stack.records()[stack.improved.ref]
    since = time.monotonic()
    os.killpg(record.pid, signal.SIGKILL)
    stack.wait_for(lambda: stack.admin().effective_weights().get(stack.improved.ref, 0) == 0, 60, "the ejection")
    trial.seconds_to_safe = time.monotonic() - since
    code = process.wait(timeout=900)
    trial.note = f"release exit {code} (1: rolled back)"
    trial.failed_plain, trial.failed_streamed = stack.users.failed(since)
    return stack.check(trial)


def mlflow_locked(stack: Stack) -> Trial:
    trial = Trial("MLflow store locked 30 s mid-release")
    process, _ = stack.release()
    stack.wait_for(lambda: stack.canary_at(50), 900, "the 50 % step")
    since = time.monotonic()
    lock = sqlite3.connect(stack.home.mlflow_db, timeout=30)
    lock.execute("BEGIN EXCLUSIVE")
    time.sleep(30)
    lock.rollback()
    lock.close()
    code = process.wait(timeout=900)
    trial.note = f"release exit {code}"
    return _judge(stack, trial, since)


def rollback_mid_canary(stack: Stack) -> Trial:
    """`previous` is set to the champion's own version: the rollback's target serves already, so
    the row measures the abort and the switch, not a vLLM start."""
    from registry.refs import PREVIOUS

    trial = Trial("fledge rollback mid-canary")
    stack.registry.set_alias(MODEL, PREVIOUS, stack.base.version)
    process, _ = stack.release()
    stack.wait_for(lambda: stack.canary_at(50), 900, "the 50 % step")
    since = time.monotonic()
    rollback, log = stack._spawn("rollback", "rollback", MODEL, "--reason", "fault matrix")
    stack.wait_for(lambda: stack.traffic().get(stack.improved.ref, 0) == 0, 120, "the canary's traffic to go")
    trial.seconds_to_safe = time.monotonic() - since
    trial.note = f"rollback exit {rollback.wait(timeout=600)}, release exit {process.wait(timeout=600)} (preempted: 1)"
    trial.failed_plain, trial.failed_streamed = stack.users.failed(since)
    return stack.check(trial)


def two_releases(stack: Stack) -> Trial:
    trial = Trial("two releases of one model at once")
    first, _ = stack.release()
    stack.wait_for(lambda: stack.home.files.release(MODEL).is_file(), 300, "the first release to start")
    second, log = stack.release()
    code = second.wait(timeout=300)
    refused = "is held by release" in log.read_text() or "still in progress" in log.read_text()
    if code == 0 or not refused:
        trial.problems.append(f"the second release was not refused (exit {code})")
    since = time.monotonic()
    trial.note = f"second refused (exit {code}); first exit {first.wait(timeout=900)}"
    trial.failed_plain, trial.failed_streamed = stack.users.failed(since)
    return stack.check(trial)


def clock_stepped(stack: Stack, step_s: float) -> Trial:
    """The plane (gateway and controller) restarted with its wall clock steppable; stepped by
    `step_s` at the 50 % step. Decisions run on the monotonic clock and the gateway's sequence
    numbers, so the rollout must end as it would have."""
    trial = Trial(f"wall clock stepped {step_s / 60:+.0f} min mid-canary")
    wall = stack.root / "wall-clock-offset"
    wall.write_text("0\n")
    stack.stop_plane()
    stack.start_plane(wall_clock_file=wall)
    try:
        process, _ = stack.release()
        stack.wait_for(lambda: stack.canary_at(50), 900, "the 50 % step")
        since = time.monotonic()
        wall.write_text(f"{step_s}\n")  # the plane's time.time() jumps; its monotonic clock does not
        code = process.wait(timeout=900)
        trial.note = f"release exit {code}"
        trial.failed_plain, trial.failed_streamed = stack.users.failed(since)
        return stack.check(trial)
    finally:
        stack.stop_plane()
        stack.start_plane()


def flood(stack: Stack) -> Trial:
    trial = Trial("oversized and malformed requests during a canary")
    process, _ = stack.release()
    stack.wait_for(lambda: stack.canary_at(50), 900, "the 50 % step")
    since, done, answers = time.monotonic(), threading.Event(), []

    def attacker():
        bodies = [b'{"model": "faults", "prompt": "' + b"x" * (2 << 20) + b'"}',
                  b'{"model": "faults", "prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                  json.dumps({"model": MODEL, "prompt": "hi", "stream": "false"}).encode(), b"{not json"]
        with httpx.Client(timeout=30) as client:
            while not done.is_set():
                for body in bodies:
                    try:
                        answers.append(client.post(f"{stack.url}/v1/completions", content=body,
                                                   headers={"content-type": "application/json"}).status_code)
                    except httpx.HTTPError as error:
                        answers.append(type(error).__name__)

    threads = [threading.Thread(target=attacker, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    code = process.wait(timeout=900)
    done.set()
    for thread in threads:
        thread.join()
    codes = sorted({str(a) for a in answers})
    trial.note = f"release exit {code}; {len(answers)} bad requests answered {', '.join(codes)}"
    if any(str(a).startswith("5") or not str(a).isdigit() for a in answers):
        trial.problems.append(f"bad requests got {codes}")
    trial.failed_plain, trial.failed_streamed = stack.users.failed(since)
    return stack.check(trial)


FAULTS: dict[str, Callable[[Stack], Trial]] = {
    "killed-evaluating": killed_while_evaluating,
    "killed-approval": killed_awaiting_approval,
    "killed-canary": lambda stack: killed_during_rollout(
        stack, "release killed at the 50 % step", lambda: stack.canary_at(50), "the 50 % step"),
    "killed-promotion": lambda stack: killed_during_rollout(
        stack, "release killed at the promotion", lambda: stack.canary_at(100), "the promotion"),
    "killed-watch": lambda stack: killed_during_rollout(
        stack, "release killed in the watch", lambda: (stack.rollout() or {}).get("stage") == "watch", "the watch"),
    "plane-restarted": plane_restarted,
    "canary-vllm-killed": canary_vllm_killed,
    "mlflow-locked": mlflow_locked,
    "rollback-mid-canary": rollback_mid_canary,
    "two-releases": two_releases,
    "clock-forward": lambda stack: clock_stepped(stack, 600.0),
    "clock-back": lambda stack: clock_stepped(stack, -600.0),
    "flood": flood,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one trial of each fault")
    parser.add_argument("--only", default="", help=f"comma-separated faults of: {', '.join(FAULTS)}")
    args = parser.parse_args()
    trials = 1 if args.quick else args.trials
    chosen = [f for f in args.only.split(",") if f] or list(FAULTS)
    unknown = set(chosen) - set(FAULTS)
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from fledge.devtools.zoo.build import build_zoo
    from fledge.services.plane import stop_serving

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))  # clean up as on Ctrl-C
    zoo = build_zoo(variants=["base", "improved"])
    root = Path(tempfile.mkdtemp(prefix="fledge-faults-"))
    results: list[Trial] = []
    with prefect_test_harness(server_startup_timeout=180):
        stack = Stack(root, zoo)
        stack.env["PREFECT_API_URL"] = PREFECT_API_URL.value()
        try:
            stack.users = Users(stack.url)
            stack.start_plane()
            stack.users.start()
            for name in chosen:
                for index in range(trials):
                    started = time.monotonic()
                    try:
                        trial = FAULTS[name](stack)
                    except Exception as error:  # noqa: BLE001 - a trial that breaks is a row, not the end
                        trial = Trial(name, problems=[f"the trial broke: {type(error).__name__}: {error}"])
                    results.append(trial)
                    safe = f"{trial.seconds_to_safe:.2f} s" if trial.seconds_to_safe is not None else "-"
                    print(f"{trial.fault} #{index + 1}: {'consistent' if not trial.problems else trial.problems}; "
                          f"failed {trial.failed_plain} plain / {trial.failed_streamed} streamed; {trial.orphans} orphans; "
                          f"to safe {safe} ({time.monotonic() - started:.0f} s; {trial.note})", flush=True)
                    try:
                        stack.reset()
                    except Exception as error:  # noqa: BLE001
                        print(f"reset failed: {error}", flush=True)
        finally:
            stack.users.stop()
            stack.stop_plane()
            stack.kill_leftovers()
            stop_serving(stack.home)
    print(f"\nlogs under {root / 'logs'}\n")
    print("| fault | trials | failed (plain / streamed) | consistent | orphans | s to safe | notes |")
    print("|---|---:|---:|---|---:|---:|---|")
    for name in dict.fromkeys(t.fault for t in results):
        rows = [t for t in results if t.fault == name]
        plain, streamed = sum(t.failed_plain for t in rows), sum(t.failed_streamed for t in rows)
        consistent = sum(1 for t in rows if not t.problems)
        safe = [t.seconds_to_safe for t in rows if t.seconds_to_safe is not None]
        problems = "; ".join(p for t in rows for p in t.problems)
        notes = "; ".join(dict.fromkeys(t.note for t in rows if t.note))
        print(f"| {name} | {len(rows)} | {plain} / {streamed} | {consistent}/{len(rows)} | "
              f"{max(t.orphans for t in rows)} | {max(safe):.2f} | " if safe else
              f"| {name} | {len(rows)} | {plain} / {streamed} | {consistent}/{len(rows)} | "
              f"{max(t.orphans for t in rows)} | - | ", end="")
        print(f"{notes}{' PROBLEMS: ' + problems if problems else ''} |")


if __name__ == "__main__":
    main()
