"""A warm launcher: one process that has imported vLLM's OpenAI server forks each new server.

A vLLM start on CPU is mostly Python imports: the API server imports vLLM (about 40 % of a
start on 2 cores), then spawns its engine core, which imports it again. This process pays the
API server's share once: `python -m serving.prefork SOCKET OWNER_PID` imports the server's
modules, listens on a Unix socket, and for each request forks a guardian (`serving.guardian`'s
`supervise`, the same as a cold start's) whose child runs vLLM's own server entry point with
the request's arguments and environment. The engine core is still spawned fresh by vLLM (its
CPU build insists on `spawn`), so every model computation runs in a clean process; what the
fork shares is only the imported Python modules of the HTTP front end.

It only forks: it never builds an engine or touches a model, and it exits when OWNER_PID
dies. The socket sits in a 0700 directory, is 0600, and a connecting process must run as
this user (SO_PEERCRED): only the owner of the servers can start one.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from serving.processes import alive

# The API server's import graph, including what it imports on the way to serving (the async
# engine client); the engine core's modules are imported by the spawned engine itself.
PRELOAD = (
    "vllm.entrypoints.launchers.api_server.entry",
    "vllm.entrypoints.launchers.cli_args",
    "vllm.entrypoints.serve.utils.api_utils",
    "vllm.v1.engine.async_llm",
    "vllm.v1.engine.core",
    "uvloop",
)
POLL_S = 0.5
READY_TIMEOUT_S = 180.0


class PreforkError(RuntimeError):
    """The warm launcher could not be started or did not answer."""


def socket_path(python: str) -> Path:
    """One warm launcher per interpreter (its venv's vLLM), in a directory only this user can
    enter; the name is short, since AF_UNIX paths stop at 107 bytes."""
    directory = Path(tempfile.gettempdir()) / f"fledge-prefork-{os.getuid()}"
    directory.mkdir(mode=0o700, exist_ok=True)
    if directory.stat().st_uid != os.getuid():
        raise PreforkError(f"{directory} belongs to another user; remove it or set TMPDIR")
    os.chmod(directory, 0o700)
    return directory / f"{hashlib.sha256(python.encode()).hexdigest()[:12]}.sock"


class PreforkClient:
    """Asks the warm launcher of `python` for a server, starting the launcher if none answers.
    A launcher lives as long as the owner of the start that started it; each server has its
    own owner, whose death stops that server (its guardian watches it)."""

    def __init__(self, python: str, log_dir: Path, environment: dict[str, str], cwd: str):
        self.python = python
        self.log_dir = Path(log_dir)
        self.environment = environment
        self.cwd = cwd
        self.path = socket_path(python)

    def spawn(self, argv: list[str], env: dict[str, str], log_path: Path, owner_pid: int, grace_s: float,
              record: tuple[str, str] | None = None, launcher_owner: int | None = None) -> int:
        """Fork a guarded server running vLLM's OpenAI server with `argv`; its guardian's pid.
        `record` (INSTANCES_JSON, KEY): the fleet record that owns the server once it names it
        (serving.guardian); `launcher_owner`: whose death ends a launcher started now."""
        request = {"argv": argv, "env": env, "log": str(log_path), "cwd": self.cwd, "owner": owner_pid,
                   "grace_s": grace_s, "record": list(record) if record else None}
        with self._launcher_lock():
            if not self._answers():
                self._start_launcher(launcher_owner or owner_pid)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(30)
            connection.connect(str(self.path))
            connection.sendall(json.dumps(request).encode() + b"\n")
            reply = json.loads(_read_line(connection))
        if "error" in reply:
            raise PreforkError(f"the warm launcher refused the start: {reply['error']}")
        return int(reply["pid"])

    @contextmanager
    def _launcher_lock(self):
        # Two starts at once (candidate and baseline) must not both start a launcher.
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _answers(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(5)
                probe.connect(str(self.path))
                probe.sendall(b'{"ping": true}\n')
                return json.loads(_read_line(probe)).get("pong") is True
        except (OSError, ValueError):
            return False

    def _start_launcher(self, owner_pid: int) -> None:
        self.path.unlink(missing_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"prefork-{owner_pid}.log"
        with open(log_path, "a") as log:
            process = subprocess.Popen(
                [self.python, "-m", "serving.prefork", str(self.path), str(owner_pid)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.environment,
                start_new_session=True, cwd=self.cwd,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise PreforkError(f"the warm launcher exited with {process.returncode}; see {log_path}")
            if self.path.exists() and self._answers():
                return
            time.sleep(0.2)
        process.kill()
        raise PreforkError(f"the warm launcher did not answer within {READY_TIMEOUT_S:.0f} s; see {log_path}")


def _read_line(connection: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


class _ForkedChild:
    """Popen's `poll()` for a child made with os.fork, so the guardian supervises either."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 0
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _guarded_server(request: dict) -> None:
    """In the forked child: become the guardian of a new process group, fork the server."""
    from serving import guardian

    os.setsid()
    for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    server = os.fork()
    if server == 0:
        _run_vllm(request["argv"])
    record = request.get("record")
    code = guardian.supervise(_ForkedChild(server), int(request["owner"]), float(request["grace_s"]),
                              record=tuple(record) if record else None)
    os._exit(code)


def _run_vllm(argv: list[str]) -> None:
    # The server entry point `python -m vllm.entrypoints.openai.api_server` runs, unchanged.
    from vllm.entrypoints.launchers.api_server.entry import main

    sys.argv = ["vllm.entrypoints.openai.api_server", *argv]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _peer_uid(connection: socket.socket) -> int:
    credentials = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", credentials)[2]


def _serve(path: str, owner_pid: int) -> int:
    started = time.monotonic()
    for module in PRELOAD:
        __import__(module)
    print(f"prefork: imported {len(PRELOAD)} modules in {time.monotonic() - started:.1f} s", flush=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_mask = os.umask(0o177)
    try:
        listener.bind(path)
    finally:
        os.umask(old_mask)
    listener.listen(16)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while alive(owner_pid):
            _reap()
            readable, _, _ = select.select([listener], [], [], POLL_S)
            if readable:
                connection, _ = listener.accept()
                with connection:
                    try:
                        _answer(connection, listener)
                    except OSError as error:  # a caller that hung up or stalled; serve the next
                        print(f"prefork: a request failed: {error}", flush=True)
    finally:
        listener.close()
        Path(path).unlink(missing_ok=True)
    return 0


def _answer(connection: socket.socket, listener: socket.socket) -> None:
    connection.settimeout(10)
    if _peer_uid(connection) != os.getuid():
        connection.sendall(b'{"error": "only the servers\' owner may start one"}\n')
        return
    try:
        request = json.loads(_read_line(connection))
    except ValueError as error:
        connection.sendall(json.dumps({"error": f"not a JSON request: {error}"}).encode() + b"\n")
        return
    if request.get("ping"):
        connection.sendall(b'{"pong": true}\n')
        return
    pid = os.fork()
    if pid == 0:
        try:
            connection.close()
            listener.close()
            _guarded_server(request)
        finally:
            os._exit(1)
    connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return



if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1], int(sys.argv[2])))
