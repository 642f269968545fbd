"""The Prefect server of the team, on PostgreSQL, and its two work pools.

Prefect 3.7's name for the database setting is PREFECT_SERVER_DATABASE_CONNECTION_URL
(PREFECT_API_DATABASE_CONNECTION_URL is still read as an alias: prefect/settings/models/
server/database.py). The server's PREFECT_HOME is its own, under FLEDGE_HOME/stack/prefect,
so a user's ~/.prefect (profiles, a local SQLite server) plays no part.
"""

from __future__ import annotations

import subprocess

import httpx

from fledge.stack.components.base import Component, StackContext, venv_tool
from fledge.stack.errors import StackError
from fledge.stack.health import http_ok
from fledge.stack.ports import HOST
from fledge.stack.processes import LaunchSpec, launch_env
from fledge.stack.records import ComponentRecord

POOLS = ("cpu", "gpu")


class PrefectServer(Component):
    name = "prefect"
    port = "prefect"
    timeout_s = 180.0  # the first start runs every migration: about 30 s on 2 cores

    def spec(self, ctx: StackContext) -> LaunchSpec:
        return LaunchSpec(
            cmd=[venv_tool("prefect"), "server", "start", "--host", HOST, "--port", str(ctx.ports[self.port]),
                 "--analytics-off"],
            env={
                "PREFECT_HOME": str(ctx.layout.prefect_home),
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": ctx.database_url("prefect", driver="postgresql+asyncpg"),
                # The UI's browser code calls the API at this URL (default 127.0.0.1:4200): this server's port.
                "PREFECT_SERVER_UI_API_URL": ctx.prefect_api,
            },
            cwd=ctx.layout.prefect_home)

    def healthy(self, ctx: StackContext, record: ComponentRecord) -> bool:
        return http_ok(f"{ctx.prefect_api}/health")

    def health_check(self, ctx: StackContext) -> str:
        return f"GET {ctx.prefect_api}/health"

    def url(self, ctx: StackContext) -> str:
        return ctx.prefect_api

    def finish(self, ctx: StackContext, started: bool) -> None:
        """The work pools `cpu` and `gpu` (type process), created where missing. The CLI creates
        them, not a bare API call: it fills in the process worker's default job template,
        which deployments' job variables are checked against."""
        missing = [pool for pool in POOLS
                   if httpx.get(f"{ctx.prefect_api}/work_pools/{pool}", timeout=10).status_code == 404]
        env = launch_env(LaunchSpec(cmd=[], env={"PREFECT_API_URL": ctx.prefect_api,
                                                 "PREFECT_HOME": str(ctx.layout.prefect_home)}), ctx.home)
        creating = {pool: subprocess.Popen([venv_tool("prefect"), "--no-prompt", "work-pool", "create", pool,
                                            "--type", "process"], env=env, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                    for pool in missing}
        for pool, process in creating.items():
            output, _ = process.communicate(timeout=120)
            if process.returncode != 0 and "already exists" not in output:
                raise StackError(f"Creating the Prefect work pool {pool!r} failed (`prefect work-pool create {pool} "
                                 f"--type process`, status {process.returncode}):\n{output.strip()}")
