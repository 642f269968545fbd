"""Bringing the team stack up, checking it and taking it down.

`up` goes in phases, each component of a phase starting at once and the phase waiting for
all of them: the stores (PostgreSQL, Prometheus), then the servers on PostgreSQL (MLflow,
Prefect, with the work pools), then the workers, then the serving plane when it has models to
serve (`up --serve NAME`, remembered for later `up`s). A component that already runs what is
wanted (same launch digest) and answers its health check is left alone, so a second `up`
takes about a second and changes no pid; a dead one, one that does not answer, or one whose
configuration changed (a new port, a new password) is started again.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fledge.core.home import FledgeHome
from fledge.core.state import create_once, read_json
from fledge.stack import envfile, records, targets
from fledge.stack.components.base import Component, StackContext
from fledge.stack.components.mlflow_server import MlflowServer
from fledge.stack.components.plane import Plane, PlaneConfig, configure
from fledge.stack.components.postgres import Postgres
from fledge.stack.components.prefect_server import PrefectServer
from fledge.stack.components.prometheus import Prometheus
from fledge.stack.components.workers import GPU_POOL_ENV, Worker, shared_urls
from fledge.stack.errors import StackError
from fledge.stack.health import wait_healthy
from fledge.stack.layout import StackLayout
from fledge.stack.ports import choose
from fledge.stack.processes import alive, group_members, members_of, spawn, stop_group, stop_processes
from fledge.stack.records import ComponentRecord, StackRecord

Log = Callable[[str], None]


def phases(plane: PlaneConfig | None = None) -> list[list[Component]]:
    started = [[Postgres(), Prometheus()], [MlflowServer(), PrefectServer()],
               [Worker("cpu", remote=False), Worker("gpu", remote=True)]]
    return started + [[Plane(plane)]] if plane is not None else started


def components() -> list[Component]:
    """Every component `status` reports and `down` stops, the plane included."""
    return [c for phase in phases(PlaneConfig(models=())) for c in phase]


# The plane's port is reserved even while no plane runs: every host is told one URL
# ($FLEDGE_PLANE_URL) before the plane starts, and `fledge gateway NAME --port
# $FLEDGE_PLANE_PORT` by hand serves there too.
PORTS = ["postgres", "prometheus", "mlflow", "prefect", "plane"]


def _layout(home: FledgeHome | Path | str | None) -> StackLayout:
    return StackLayout.of(home if home is not None else FledgeHome.from_env())


def _require_python_clients() -> None:
    from importlib.util import find_spec

    missing = [name for module, name in (("psycopg2", "psycopg2-binary"), ("asyncpg", "asyncpg"))
               if find_spec(module) is None]
    if missing:
        raise StackError(f"{' and '.join(missing)} missing from Fledge's environment (MLflow and Prefect reach "
                         "PostgreSQL through them); run scripts/stack-setup.sh and try again.")


def _password(layout: StackLayout) -> str:
    password = create_once(layout.password_file, secrets.token_hex(16)).strip()
    if not password.isalnum():
        raise StackError(f"The stack's database password in {layout.password_file} must be letters and digits only; "
                         "delete the file and run `up` again (a new one is made and set).")
    return password


def _context(layout: StackLayout, record: StackRecord) -> StackContext:
    held = {c.port for c in components() if c.port and c.name in record.components
            and alive(record.components[c.name].pid)}
    held.add("plane")  # kept even when taken: the plane itself may be serving on it now
    return StackContext(layout=layout, ports=choose(PORTS, record.ports, held), password=_password(layout))


def _clear_orphans(record: StackRecord) -> None:
    """The groups of components whose leader died (killed, crashed) may still hold its port
    (uvicorn's workers outlive `mlflow server`): they are stopped first, so the port is free
    again and the URLs stay as recorded."""
    for existing in record.components.values():
        if not alive(existing.pid) and group_members(existing.pid):
            stop_group(existing.pid, grace_s=5.0)


@dataclass
class Started:
    component: Component
    record: ComponentRecord
    began: float
    fresh: bool = True  # started by this `up`; else found still starting (an earlier `up` was interrupted)


def _start(component: Component, ctx: StackContext, record: StackRecord) -> Started:
    existing = record.components.get(component.name)
    if existing is not None:
        stop_group(existing.pid, component.stop_signal, component.grace_s)
    spec, log_path = component.spec(ctx), ctx.layout.log(component.name)
    pid = spawn(spec, ctx.home, log_path)
    record.components[component.name] = ComponentRecord(
        name=component.name, pid=pid, port=ctx.ports.get(component.port) if component.port else None,
        log=str(log_path), started_at=time.time(), spec=spec.digest(), url=component.url(ctx))
    records.save(ctx.layout.state_file, record)  # before waiting: an interrupted `up` leaves pids to stop
    return Started(component, record.components[component.name], time.monotonic())


def _wait(item: Started, ctx: StackContext) -> None:
    wait_healthy(item.component.name, item.record.pid, lambda: item.component.healthy(ctx, item.record),
                 item.component.timeout(), Path(item.record.log), item.component.health_check(ctx))


def up(home: FledgeHome | Path | str | None = None, log: Log = print, serve: list[str] | None = None,
       plane_policy: Path | None = None) -> StackRecord:
    """Bring the stack up (or leave what runs healthy alone); returns the record. SERVE names
    the models the plane serves from now on (their champions must be registered in the stack's
    MLflow); without it, the models an earlier `up --serve` named, or no plane."""
    layout = _layout(home).ensure()
    _require_python_clients()
    with records.locked(layout.lock_file):
        plane = configure(layout.plane_config, serve, plane_policy) if serve else PlaneConfig.load(layout.plane_config)
        record = records.load(layout.state_file, layout.home.root)
        _clear_orphans(record)
        ctx = _context(layout, record)
        record.ports, record.pg_root = ctx.ports, str(layout.pg_root)
        records.save(layout.state_file, record)
        for phase in phases(plane):
            waiting: list[Started] = []
            for component in phase:
                component.prepare(ctx)
                existing = record.components.get(component.name)
                if existing is not None and existing.spec == component.spec(ctx).digest() and alive(existing.pid):
                    if component.healthy(ctx, existing):
                        log(f"{component.name:<11} running   pid {existing.pid:<7} {component.where(ctx)}")
                        continue
                    waiting.append(Started(component, existing, time.monotonic(), fresh=False))
                    continue
                waiting.append(_start(component, ctx, record))
            for item in waiting:
                try:
                    _wait(item, ctx)
                except StackError:
                    if item.fresh:
                        raise
                    log(f"{item.component.name:<11} pid {item.record.pid} never became healthy: starting it again")
                    item = _start(item.component, ctx, record)
                    _wait(item, ctx)
                log(f"{item.component.name:<11} started   pid {item.record.pid:<7} {item.component.where(ctx)}"
                    f"  (healthy after {time.monotonic() - item.began:.1f} s)")
            restarted = {item.component.name for item in waiting}
            for component in phase:
                component.finish(ctx, started=component.name in restarted)
        envfile.write(layout.env_file, stack_environment(ctx))
        targets.publish(layout.home, layout.targets)
        log(f"stack up: source {layout.env_file} to use it")
        return record


def stack_environment(ctx: StackContext) -> dict[str, str]:
    return {**shared_urls(ctx), "FLEDGE_PLANE_PORT": str(ctx.ports["plane"]), GPU_POOL_ENV: "gpu",
            "FLEDGE_HOME": str(ctx.home), "FLEDGE_PROMETHEUS_URL": ctx.url("prometheus")}


@dataclass(frozen=True)
class ComponentStatus:
    name: str
    pid: int | None
    port: int | None
    running: bool
    healthy: bool
    url: str | None
    log: str | None


def status(home: FledgeHome | Path | str | None = None, log: Log | None = print) -> list[ComponentStatus]:
    """Each component's pid, port and health, as recorded and as checked now."""
    layout = _layout(home)
    record = records.load(layout.state_file, layout.home.root)
    ctx = StackContext(layout=layout, ports=record.ports, password="")
    rows = []
    for component in components():
        existing = record.components.get(component.name)
        if component.name == "plane" and existing is None and PlaneConfig.load(layout.plane_config) is None:
            continue  # no model to serve was ever named: no plane is wanted, none is missing
        running = existing is not None and alive(existing.pid)
        healthy = False
        if running:
            try:
                healthy = component.healthy(ctx, existing)
            except Exception:  # a check that cannot even ask (e.g. a port no longer recorded) is a "no"
                healthy = False
        rows.append(ComponentStatus(component.name, existing.pid if existing else None,
                                    existing.port if existing else None, running, healthy,
                                    existing.url if existing else None, existing.log if existing else None))
    if log is not None:
        log(f"{'component':<11} {'pid':<7} {'port':<6} state")
        for row in rows:
            state = "healthy" if row.healthy else ("UNHEALTHY (see " + str(row.log) + ")" if row.running else "stopped")
            log(f"{row.name:<11} {row.pid or '-':<7} {row.port or '-':<6} {state}  {row.url or ''}")
    return rows


def _stop_serving(home: FledgeHome, log: Log) -> None:
    """The fleet's vLLM servers, when it has any: they may have been started by the stack's
    workers (release runs), and they hold memory the next `up` would want back."""
    if not read_json(home.files.instances):
        return
    from fledge.services.plane import stop_serving

    stopped = stop_serving(home)
    if stopped:
        log(f"serving     stopped   {', '.join(stopped)}")


def down(home: FledgeHome | Path | str | None = None, purge: bool = False, log: Log = print) -> list[str]:
    """Stop everything `up` started, the plane and its servers first and PostgreSQL last, each by its recorded
    pid and process group (the component's stop signal, SIGKILL after a grace). The ports
    stay recorded for the next `up`; with `purge` the stack's data goes too (databases,
    artifacts, Prometheus' TSDB). Returns the components that were running."""
    layout = _layout(home)
    stopped: list[str] = []
    with records.locked(layout.lock_file):
        record = records.load(layout.state_file, layout.home.root)
        # The plane first (it would start the champions again), then its servers, then the rest.
        last_first = list(reversed(components()))
        for component in [c for c in last_first if c.name == "plane"]:
            _stop_component(component, record, layout, stopped, log)
        _stop_serving(layout.home, log)
        for component in [c for c in last_first if c.name != "plane"]:
            _stop_component(component, record, layout, stopped, log)
        # Started by a component but out of its group (a flow run, a PostgreSQL backend).
        stray = members_of(layout.home.root, _clusters(layout, record))
        if stray:
            log(f"stopping {len(stray)} more process(es) started by the stack: {', '.join(str(p.pid) for p in stray)}")
            stop_processes(stray)
        layout.env_file.unlink(missing_ok=True)
        if purge:
            _purge(layout, record)
            layout.state_file.unlink(missing_ok=True)
            log("stack data removed (databases, artifacts, metrics)")
        else:
            records.save(layout.state_file, record)
    return stopped


def _stop_component(component: Component, record: StackRecord, layout: StackLayout, stopped: list[str],
                    log: Log) -> None:
    existing = record.components.pop(component.name, None)
    if existing is None:
        return
    if stop_group(existing.pid, component.stop_signal, component.grace_s):
        stopped.append(component.name)
        log(f"{component.name:<11} stopped   pid {existing.pid}")
    records.save(layout.state_file, record)


def _clusters(layout: StackLayout, record: StackRecord) -> tuple[Path, ...]:
    """The stack's PostgreSQL cluster (a purged record still names where it was)."""
    return (Path(record.pg_root) if record.pg_root else layout.pg_root,)


def _purge(layout: StackLayout, record: StackRecord) -> None:
    pg_root = Path(record.pg_root) if record.pg_root else layout.pg_root
    for path in (pg_root, layout.root):
        if path.exists():
            shutil.rmtree(path)


def stack_processes(home: FledgeHome | Path | str | None = None) -> list:
    """Every live process the stack of this home started, directly or not (psutil.Process)."""
    layout = _layout(home)
    return members_of(layout.home.root, _clusters(layout, records.load(layout.state_file, layout.home.root)))


def leftover_pids(home: FledgeHome | Path | str | None = None, pids: list[int] = ()) -> list[int]:
    """Processes of this home's stack still alive: `pids` (e.g. those `up` recorded), their
    groups, every process carrying the home's marker and every PostgreSQL process of its
    cluster. A clean `down` leaves none."""
    layout = _layout(home)
    record = records.load(layout.state_file, layout.home.root)
    recorded = {c.pid for c in record.components.values()} | set(pids)
    found = {p for p in recorded if alive(p)} | {p for pid in recorded for p in group_members(pid)}
    found |= {p.pid for p in stack_processes(home)}
    return sorted(found - {os.getpid()})
