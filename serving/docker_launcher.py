"""Start vLLM in the `vllm/vllm-openai` image on a GPU host, through the Docker SDK.

Same contract as `LocalLauncher`: `start(config) -> ServerHandle`, healthy or `LaunchError`
with the container's log tail; `handle.stop()` stops and removes the container. The model
directory is bind-mounted read-only, so the container serves exactly the verified files.
"""

from __future__ import annotations

import time
from pathlib import Path

from serving.config import ServerConfig, vllm_server_args, vllm_server_environment
from serving.errors import LaunchError
from serving.health import wait_until_ready
from serving.launcher import LOG_TAIL_LINES, ServerHandle, free_port

DEFAULT_IMAGE = "vllm/vllm-openai:latest"
CONTAINER_MODEL_DIR = "/models/served"
CONTAINER_PORT = 8000
LABEL = "fledge.served_model"


def container_spec(config: ServerConfig, host_port: int, image: str = DEFAULT_IMAGE, gpus: int = -1) -> dict:
    """Keyword arguments for `docker.containers.run`; pure, so it is tested without an engine."""
    from docker.types import DeviceRequest

    args = vllm_server_args(config.model_copy(update={"host": "0.0.0.0"}), CONTAINER_MODEL_DIR, CONTAINER_PORT)
    return {
        "image": image,
        "command": args,
        "detach": True,
        "device_requests": [DeviceRequest(count=gpus, capabilities=[["gpu"]])],
        "volumes": {str(Path(config.model_dir).resolve()): {"bind": CONTAINER_MODEL_DIR, "mode": "ro"}},
        "ports": {f"{CONTAINER_PORT}/tcp": (config.host, host_port)},
        "ipc_mode": "host",  # vLLM's tensor-parallel workers share memory through /dev/shm
        "environment": {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", **vllm_server_environment(config)},
        "labels": {LABEL: config.served_model_name},
        "name": f"fledge-{config.served_model_name.replace('/', '-')}-{host_port}",
    }


class _ContainerStopper:
    def __init__(self, container, grace_s: float):
        self.container = container
        self.grace_s = grace_s

    def is_running(self) -> bool:
        try:
            self.container.reload()
        except Exception:
            return False
        return self.container.status in ("created", "running")

    def stop(self) -> None:
        try:
            self.container.stop(timeout=int(self.grace_s))
        finally:
            try:
                self.container.remove(force=True)
            except Exception:
                pass


class DockerLauncher:
    def __init__(self, log_dir: Path, image: str = DEFAULT_IMAGE, gpus: int = -1, client=None):
        self.log_dir = Path(log_dir)
        self.image = image
        self.gpus = gpus
        self._client = client

    def client(self):
        if self._client is None:
            import docker
            from docker.errors import DockerException

            try:
                self._client = docker.from_env()
                self._client.ping()
            except DockerException as error:
                raise LaunchError(
                    f"No Docker engine is reachable ({error}). The Docker launcher is for GPU hosts "
                    "with a Docker engine and the NVIDIA container toolkit; on this machine use the "
                    "local launcher (`--launcher local`)."
                ) from None
        return self._client

    def start(self, config: ServerConfig) -> ServerHandle:
        client = self.client()
        port = config.port or free_port(config.host)
        spec = container_spec(config, port, self.image, self.gpus)
        container = client.containers.run(**spec)
        stopper = _ContainerStopper(container, config.stop_grace_s)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{spec['name']}.log"
        handle = ServerHandle(
            config=config, base_url=f"http://{config.host}:{port}/v1", port=port, log_path=log_path, _stopper=stopper
        )
        started = time.monotonic()
        try:
            wait_until_ready(handle.base_url, config.served_model_name, config.startup_timeout_s, stopper.is_running)
        except (TimeoutError, ChildProcessError) as error:
            logs = container.logs(tail=LOG_TAIL_LINES).decode(errors="replace")
            log_path.write_text(logs)
            stopper.stop()
            raise LaunchError(
                f"vLLM container {spec['name']} did not start for {config.served_model_name}: {error}. "
                f"Last lines of its log:\n{logs}"
            ) from None
        except BaseException:
            stopper.stop()
            raise
        handle.started_s = time.monotonic() - started
        return handle
