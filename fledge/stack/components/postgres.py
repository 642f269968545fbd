"""PostgreSQL 15, Debian's binaries, in a cluster of the stack's own: the store of MLflow and
of Prefect, one database each, reached over 127.0.0.1 as one role with a password.

PostgreSQL refuses to run as root, so as root it runs as the `postgres` user, and its
cluster lives where that user can go (layout.pg_root, not under a FLEDGE_HOME in /root). Its
log is opened by the stack and handed over as stdout, so the server writes a file in a
directory it could not open itself. The unix socket sits in the cluster's directory (mode
0700): only postgres (and root) reach it, which is why local connections may be trusted there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from fledge.stack.components.base import DB_ROLE, Component, StackContext
from fledge.stack.errors import StackError
from fledge.stack.layout import PG_BIN, runs_as_root
from fledge.stack.ports import HOST
from fledge.stack.processes import LaunchSpec
from fledge.stack.records import ComponentRecord

DATABASES = ("mlflow", "prefect")
SUPERUSER = "postgres"


def _as_postgres() -> dict:
    return {"user": SUPERUSER, "group": SUPERUSER, "extra_groups": []} if runs_as_root() else {}


def _tool(name: str) -> str:
    path = PG_BIN / name
    if not path.is_file():
        raise StackError(f"PostgreSQL 15's {name} is missing ({path}); run scripts/stack-setup.sh (installs Debian's "
                         "postgresql) and try again.")
    return str(path)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


class Postgres(Component):
    name = "postgres"
    port = "postgres"
    timeout_s = 60.0
    # SIGINT is PostgreSQL's fast shutdown (clients disconnected, a clean checkpoint); its
    # SIGTERM is a "smart" one that waits for every client to leave.
    stop_signal = signal.SIGINT
    grace_s = 20.0

    def _claim_dir(self, ctx: StackContext) -> Path:
        root = ctx.layout.pg_root
        root.mkdir(parents=True, exist_ok=True)
        if runs_as_root():
            root.parent.chmod(0o755)  # postgres must traverse /var/lib/fledge-stack to its own directory
            shutil.chown(root, SUPERUSER, SUPERUSER)
        root.chmod(0o700)
        owner = root / "home"  # which home this cluster belongs to: the directory is named by a digest
        if not owner.is_file():
            owner.write_text(f"{ctx.home}\n")
        return root

    def prepare(self, ctx: StackContext) -> None:
        root = self._claim_dir(ctx)
        if (ctx.layout.pgdata / "PG_VERSION").is_file():
            return
        log = ctx.layout.log(self.name)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            # Local (socket) connections are trusted: the socket's directory admits only postgres.
            # TCP connections need the role's password (scram-sha-256).
            result = subprocess.run(
                [_tool("initdb"), "-D", str(ctx.layout.pgdata), "-U", SUPERUSER, "-E", "UTF8", "--no-locale",
                 "--auth-local=trust", "--auth-host=scram-sha-256"],
                cwd=root, env=_clean_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                timeout=120, **_as_postgres())
        if result.returncode != 0:
            raise StackError(f"initdb of the stack's PostgreSQL cluster in {ctx.layout.pgdata} failed (status "
                             f"{result.returncode}); read {log}. A half-made cluster can be removed with "
                             f"`python -m fledge.stack down --purge`.")

    def spec(self, ctx: StackContext) -> LaunchSpec:
        return LaunchSpec(
            cmd=[_tool("postgres"), "-D", str(ctx.layout.pgdata), "-p", str(ctx.ports[self.port]),
                 "-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={ctx.layout.pg_root}",
                 "-c", "logging_collector=off"],
            cwd=ctx.layout.pg_root, user=SUPERUSER if runs_as_root() else None)

    def healthy(self, ctx: StackContext, record: ComponentRecord) -> bool:
        result = subprocess.run([_tool("pg_isready"), "-q", "-h", HOST, "-p", str(record.port or ctx.ports[self.port])],
                                env=_clean_env(), stdin=subprocess.DEVNULL, timeout=10)
        return result.returncode == 0

    def health_check(self, ctx: StackContext) -> str:
        return f"pg_isready -h {HOST} -p {ctx.ports[self.port]}"

    def url(self, ctx: StackContext) -> str:
        return f"postgresql://{DB_ROLE}@{HOST}:{ctx.ports[self.port]}"

    def finish(self, ctx: StackContext, started: bool) -> None:
        """The role (its password set from the stack's password file at every `up`, so the two
        never disagree) and one database per server; pg_trgm for Prefect's name indexes."""
        creates = "\n".join(
            f"SELECT 'CREATE DATABASE {db} OWNER {DB_ROLE}' WHERE NOT EXISTS "
            f"(SELECT 1 FROM pg_database WHERE datname = '{db}') \\gexec" for db in DATABASES)
        script = (
            f"SELECT 'CREATE ROLE {DB_ROLE} LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{DB_ROLE}') \\gexec\n"
            f"ALTER ROLE {DB_ROLE} WITH LOGIN PASSWORD '{ctx.password}';\n"
            f"{creates}\n"
            "\\c prefect\nCREATE EXTENSION IF NOT EXISTS pg_trgm;\n")
        result = subprocess.run(
            [_tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(ctx.layout.pg_root), "-p",
             str(ctx.ports[self.port]), "-U", SUPERUSER, "-d", "postgres"],
            input=script, text=True, capture_output=True, cwd=ctx.layout.pg_root, env=_clean_env(), timeout=60,
            **_as_postgres())
        if result.returncode != 0:
            raise StackError(f"Creating the stack's databases ({', '.join(DATABASES)}) and role {DB_ROLE} failed: "
                             f"{result.stderr.strip()}. The server's log: {ctx.layout.log(self.name)}.")
