"""The two process workers: `cpu` runs flows from this checkout, with this home; `gpu` stands
for a worker on another host. It gets a working directory, HOME, PREFECT_HOME and
FLEDGE_HOME of its own (FLEDGE_HOME/stack/gpu-host) and shares nothing with the rest but
three URLs: the Prefect API, the MLflow server and the serving plane. A flow that works on
this `gpu` worker does not depend on files only the release's host has.

Health is what Prefect itself knows: the worker is listed on its pool with a heartbeat sent
since this process started (a worker of the same name from an earlier `up` does not count).
"""

from __future__ import annotations

import time
from datetime import datetime

import httpx

from fledge.stack.components.base import Component, StackContext, repo_root, venv_tool
from fledge.stack.processes import LaunchSpec
from fledge.stack.records import ComponentRecord

GPU_POOL_ENV = "FLEDGE_GPU_WORK_POOL"  # read by flows/dispatch.py (not imported: flows are above the stack)
STALE_AFTER_S = 90.0  # 3 heartbeats at Prefect's default PREFECT_WORKER_HEARTBEAT_SECONDS (30)


def worker_name(pool: str) -> str:
    return f"fledge-{pool}-worker"


def shared_urls(ctx: StackContext) -> dict[str, str]:
    """What every host of the team is given: where the APIs and the serving plane are."""
    return {"PREFECT_API_URL": ctx.prefect_api, "MLFLOW_TRACKING_URI": ctx.url("mlflow"),
            "FLEDGE_MLFLOW_UI_URL": ctx.url("mlflow"), "FLEDGE_PLANE_URL": ctx.url("plane")}


def heartbeat(ctx: StackContext, pool: str) -> float | None:
    """The worker's last heartbeat on its pool, in epoch seconds; None when it is not listed."""
    try:
        response = httpx.post(f"{ctx.prefect_api}/work_pools/{pool}/workers/filter", json={"limit": 200}, timeout=5)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    beats = [w["last_heartbeat_time"] for w in response.json()
             if w.get("name") == worker_name(pool) and w.get("last_heartbeat_time")]
    return max((datetime.fromisoformat(b).timestamp() for b in beats), default=None)


class Worker(Component):
    timeout_s = 90.0

    def __init__(self, pool: str, remote: bool):
        self.pool, self.remote = pool, remote
        self.name = f"worker-{pool}"

    def _dir(self, ctx: StackContext):
        return ctx.layout.worker_dir(self.pool)

    def prepare(self, ctx: StackContext) -> None:
        self._dir(ctx).mkdir(parents=True, exist_ok=True)

    def spec(self, ctx: StackContext) -> LaunchSpec:
        own = self._dir(ctx)
        env = {**shared_urls(ctx), "PREFECT_HOME": str(own / ".prefect")}
        if self.remote:
            env.update({"HOME": str(own), "FLEDGE_HOME": str(own / ".fledge")})
            cwd = own
        else:
            env.update({"FLEDGE_HOME": str(ctx.home), GPU_POOL_ENV: "gpu"})
            cwd = repo_root()
        return LaunchSpec(
            cmd=[venv_tool("prefect"), "worker", "start", "--pool", self.pool, "--type", "process",
                 "--name", worker_name(self.pool), "--install-policy", "never"],
            env=env, cwd=cwd)

    def healthy(self, ctx: StackContext, record: ComponentRecord) -> bool:
        beat = heartbeat(ctx, self.pool)
        return beat is not None and beat >= record.started_at and time.time() - beat < STALE_AFTER_S

    def health_check(self, ctx: StackContext) -> str:
        return (f"worker {worker_name(self.pool)} listed with a recent heartbeat by POST "
                f"{ctx.prefect_api}/work_pools/{self.pool}/workers/filter")

    def url(self, ctx: StackContext) -> None:
        return None

    def where(self, ctx: StackContext) -> str:
        return f"pool {self.pool}, as {worker_name(self.pool)}" + (" (own HOME: another host)" if self.remote else "")
