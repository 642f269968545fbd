"""The MLflow tracking server of the team: runs and the model registry in PostgreSQL, the
artifacts under FLEDGE_HOME/stack/artifacts served through the server itself (clients upload
and download over HTTP, `mlflow-artifacts:/`), so a worker on another host needs only the URL.
"""

from __future__ import annotations

import os

from fledge.stack.components.base import Component, StackContext, venv_tool
from fledge.stack.health import http_ok
from fledge.stack.ports import HOST
from fledge.stack.processes import LaunchSpec
from fledge.stack.records import ComponentRecord


class MlflowServer(Component):
    name = "mlflow"
    port = "mlflow"
    timeout_s = 180.0  # the first start creates the schema: about 20 s on 2 cores

    def spec(self, ctx: StackContext) -> LaunchSpec:
        return LaunchSpec(
            cmd=[venv_tool("mlflow"), "server", "--artifacts-destination", str(ctx.layout.artifacts),
                 "--serve-artifacts", "--host", HOST, "--port", str(ctx.ports[self.port]),
                 "--workers", os.environ.get("FLEDGE_STACK_MLFLOW_WORKERS", "2")],
            env={
                # = --backend-store-uri (mlflow's option reads this variable): the password stays
                # out of the command line, which every user of the machine can read in `ps`.
                # The driver is named: SQLAlchemy 2.1's default for postgresql:// is psycopg 3.
                "MLFLOW_BACKEND_STORE_URI": ctx.database_url("mlflow", driver="postgresql+psycopg2"),
                # The job runner (GenAI judge jobs: huey consumers, ~150 MB each) is not used by Fledge.
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            },
            cwd=ctx.layout.root)

    def healthy(self, ctx: StackContext, record: ComponentRecord) -> bool:
        return http_ok(f"{ctx.url(self.port)}/health")

    def health_check(self, ctx: StackContext) -> str:
        return f"GET {ctx.url(self.port)}/health"
