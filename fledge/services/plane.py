"""The serving plane of a team's models: the gateway that takes their traffic (a route table
per public model name) and the vLLM instances behind it. It outlives any release: `fledge
gateway NAME [NAME ...]` (or the demo) runs it, and every other process reaches it through
`connect_plane`, which reads what the plane recorded in FLEDGE_HOME/state.

The instances belong to their fleet records (serving.fleet), whose leases the plane keeps: a
promoted candidate keeps serving after the release run ends, a release run killed half-way
leaves its canary serving, and stopping or crashing the plane leaves every instance serving.
A plane that starts re-attaches first: it keeps every recorded instance that answers its
health check, stops the others, and takes the persisted routes only where they lead to a live
instance, all before the gateway answers a request. Stopping the instances is its own,
explicit step (`stop_serving`, `fledge fleet stop`).
"""

from __future__ import annotations

import os
import secrets
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from fledge.core.errors import FledgeError
from fledge.core.home import FledgeHome
from fledge.core.policy import ServingPolicy
from fledge.core.state import write_json
from fledge.services.controller import RolloutController, models_with_rollouts, rollout_in_progress
from fledge.services.evaluate import server_config
from fledge.services.leases import held_lease
from fledge.services.plane_record import plane_models, read_plane_record
from registry.adapters import adapter_rank
from registry.refs import CHAMPION
from registry.store import ModelRegistry, VersionInfo
from serving.engine import supported_architectures
from serving.fleet import Fleet, InstanceRecord
from serving.gateway.client import GatewayAdmin
from serving.gateway.leases import LeaseTable
from serving.gateway.routes import Backend, RouteBook, RouteChangeRefused, RouteTable, load_routes, save_routes
from serving.gateway.server import BackgroundGateway, admin_token, build_gateway
from serving.launcher import LocalLauncher
from serving.naming import instance_key


class PlaneNotRunning(FledgeError):
    pass


def fleet_for(home: FledgeHome) -> Fleet:
    """The instances of this home. A new one belongs to its record once it is ready (until
    then to this process); the running plane keeps its lease, as does this process while it
    lives. The warm launcher is the plane's, when one runs."""
    record = read_plane_record(home)
    owner = record["pid"] if record else None
    return Fleet(home.state, LocalLauncher(home.logs, owner_pid=owner))


def stop_serving(home: FledgeHome) -> list[str]:
    """Stop every instance of this home (adapters first) and remove their records; the routes
    are left as they are (a plane started later serves the champion again)."""
    return Fleet(home.state, LocalLauncher(home.logs)).stop_all()


def reconcile_routes(table: RouteTable | None, live: dict[str, InstanceRecord]) -> RouteTable | None:
    """The persisted routes kept only where they lead to a live instance: a backend is live
    when an instance serving its model name listens at its URL; the share of a dead one goes
    to the stable backend (serving.gateway.routes.RouteTable.reconciled). None when no live
    backend is left to take the traffic."""
    if table is None:
        return None
    serving = {(r.base_url, r.served_model_name) for r in live.values()}
    healthy = {k for k, b in table.backends.items() if (b.base_url, b.upstream_model) in serving}
    try:
        return table.reconciled(healthy)
    except RouteChangeRefused:
        return None


def serve_version(
    registry: ModelRegistry, home: FledgeHome, serving: ServingPolicy, ref: str, fleet: Fleet, baseline: bool = False,
    cores: str | None = None,
) -> tuple[InstanceRecord, bool]:
    """Resolve, materialize (every checksum verified) and serve a version, or find it served
    with the same serving settings (else it is restarted with these). Returns the instance and
    whether it was started now. Unpinned by default (`cores`)."""
    version = registry.resolve(ref)
    key = instance_key(version.ref, baseline)
    if version.adapter_base:
        return _serve_adapter(registry, home, serving, version, fleet, baseline, cores)
    running = fleet.get(key)
    # Verified when it was started: the settings are compared without materializing again.
    if running is not None and Path(running.model_dir, "config.json").is_file():
        if running.runs_like(server_config(serving, Path(running.model_dir), version.ref, cores)):
            return running, False
    model_dir = registry.materialize(version.ref, home.checkpoints, supported_architectures())
    return fleet.ensure(key, server_config(serving, model_dir, version.ref, cores=cores))


class AdapterNotServable(FledgeError):
    """A LoRA adapter the policy's servers cannot take (LoRA off, or a rank above the limit)."""


def _serve_adapter(registry: ModelRegistry, home: FledgeHome, serving: ServingPolicy, version: VersionInfo,
                   fleet: Fleet, baseline: bool, cores: str | None) -> tuple[InstanceRecord, bool]:
    """A LoRA adapter is loaded onto the instance serving its base (the champion's own server
    when the base is the champion), started only if none runs: no server of its own."""
    if not serving.lora.enabled:
        raise AdapterNotServable(
            f"{version.ref} is a LoRA adapter, and the policy's servers do not take adapters (serving.lora.enabled is "
            "false). Enable it in the policy and restart the gateway so the base's server starts with LoRA.")
    adapter_dir = registry.materialize(version.ref, home.checkpoints, supported_architectures())
    rank = adapter_rank(adapter_dir)
    if rank > serving.lora.max_rank:
        raise AdapterNotServable(f"{version.ref} has LoRA rank {rank}, above the policy's serving.lora.max_rank "
                                 f"{serving.lora.max_rank}; raise the limit (servers restart with it) or retrain at a lower rank.")
    host, started = serve_version(registry, home, serving, version.adapter_base, fleet, baseline, cores)
    record, _ = fleet.load_adapter(instance_key(version.ref, baseline), host.key, version.ref, adapter_dir)
    return record, started


@dataclass
class ServingPlane:
    home: FledgeHome
    admin: GatewayAdmin
    fleet: Fleet
    controller: "RolloutController | None" = None  # in the plane's own process only

    @property
    def url(self) -> str:
        return self.admin.url

    def routes(self) -> RouteTable | None:
        """The table of the model this plane handle is for (the plane's only one, if unnamed)."""
        return self.admin.routes()

    def for_model(self, model: str) -> "ServingPlane":
        return ServingPlane(self.home, self.admin.for_model(model), self.fleet, self.controller)


def connect_plane(home: FledgeHome, model: str | None = None, url: str | None = None) -> ServingPlane:
    """The running plane of this home (or the gateway at `url`), checked to answer; with
    `model`, checked to serve that model."""
    fix = (f"Start it with `fledge gateway {model or 'NAME'}` (it serves {model or 'NAME'}@champion behind the gateway; "
           "name every model the team serves) and keep it running while releases go through.")
    if url is None:
        record = read_plane_record(home)
        if record is None:
            raise PlaneNotRunning(f"No gateway is running for this Fledge home ({home.root}). {fix}")
        served = plane_models(record)
        if model is not None and served and model not in served:
            raise PlaneNotRunning(f"The running gateway ({record['url']}) serves {', '.join(served)}, not {model}. "
                                  f"Restart it naming every model: `fledge gateway {' '.join([*served, model])}`.")
        url = record["url"]
    admin = GatewayAdmin(url, admin_token(home.state), model=model)
    try:
        tables = admin.tables()
    except Exception as error:
        raise PlaneNotRunning(f"The gateway at {url} does not answer ({error}). {fix}") from None
    if model is not None and tables and model not in tables:
        raise PlaneNotRunning(f"The gateway at {url} serves {', '.join(tables)}, not {model}. "
                              f"Restart it naming every model: `fledge gateway {' '.join([*tables, model])}`.")
    held = held_lease(model) if model else None
    if held is not None:  # this context's changes of the model go under its lease
        admin = admin.fenced(held.lease)
    return ServingPlane(home, admin, fleet_for(home))


def _champion_table(registry: ModelRegistry, home: FledgeHome, serving: ServingPolicy, fleet: Fleet, model: str,
                    saved: RouteTable | None, log: Callable[[str], None]) -> RouteTable:
    """MODEL@champion served, and the table the gateway starts with for MODEL: the saved one
    where it leads to live instances and puts the champion first, or a rollout on record owns
    it (between its promotion and the alias move the stable backend is the canary, not yet the
    champion); else the champion at 100 %."""
    champion, started = serve_version(registry, home, serving, f"{model}@{CHAMPION}", fleet)
    if started:
        log(f"Serving {model}@{CHAMPION} ({champion.served_model_name}): started at {champion.base_url}")
    live = reconcile_routes(saved, fleet.records())
    stable = live.stable() if live else None
    if live is not None and (rollout_in_progress(home, model) or (stable is not None and (
            stable.version, stable.base_url) == (champion.served_model_name, champion.base_url))):
        return live
    return RouteTable.serving_only(model, Backend(version=champion.served_model_name, base_url=champion.base_url))


@contextmanager
def run_plane(
    home: FledgeHome, models: str | Sequence[str], serving: ServingPolicy, registry: ModelRegistry,
    host: str = "127.0.0.1", port: int | None = None, log: Callable[[str], None] = print,
) -> Iterator[ServingPlane]:
    """Run the gateway in this process with MODEL@champion behind it for each of `models`:
    re-attach to the instances still serving, keep each persisted split where it leads to
    live instances (a canary in progress keeps its share), else put the champion at 100 %.
    The rollout controller (services.controller) runs here and resumes the rollouts on record.
    On exit the controller and the gateway stop and the instances keep serving, their leases
    no longer renewed by this process. The plane handle it yields addresses the first model."""
    models = [models] if isinstance(models, str) else list(dict.fromkeys(models))
    if not models:
        raise ValueError("a serving plane serves at least one model")
    home.ensure()
    leases = LeaseTable(home.files.leases)
    leased = [m for m in leases.leases if leases.current(m)]
    unnamed = [m for m in dict.fromkeys([*models_with_rollouts(home), *leased]) if m not in models]
    if unnamed:  # a rollout or an operator is at work on them: they end here, not in limbo
        log(f"Serving {', '.join(unnamed)} as well: a rollout or a release of each is in progress")
        models += unnamed
    fleet = Fleet(home.state, LocalLauncher(home.logs, owner_pid=os.getpid()))
    kept, removed = fleet.reattach()
    if kept or removed:
        log(f"Re-attached to {len(kept)} running instance(s){': ' + ', '.join(kept) if kept else ''}"
            + (f"; stopped {len(removed)} that did not answer: {', '.join(removed)}" if removed else ""))
    fleet.keep_leases(every_record=True)
    saved = load_routes(home.files.routes)
    book = RouteBook()
    for model in models:  # a model the plane no longer serves keeps no table
        book = book.with_table(_champion_table(registry, home, serving, fleet, model, saved.tables.get(model), log))
    save_routes(book, home.files.routes)  # before the gateway loads them: it never answers from stale routes
    controller_token = secrets.token_urlsafe(24)  # never written: it lives and dies with this process
    controller = None
    try:
        with BackgroundGateway(build_gateway(home.state, serving.gateway, controller_token=controller_token),
                               host=host, port=port) as gateway:
            controller = RolloutController(home, registry, GatewayAdmin(gateway.url, controller_token), fleet, log=log)
            gateway.gateway.rollouts = controller
            controller.resume_all()  # a rollout the last plane left half-way goes on from its stage
            write_json(home.files.plane, {"url": gateway.url, "models": models, "pid": os.getpid()})
            admin = GatewayAdmin(gateway.url, admin_token(home.state), model=models[0])
            for model, table in book.tables.items():
                split = ", ".join(f"{k} {b.weight} %" for k, b in table.backends.items() if b.weight)
                log(f"Gateway for {model} at {gateway.url}/v1: {split}")
            try:
                yield ServingPlane(home, admin, fleet, controller)
            finally:
                home.files.plane.unlink(missing_ok=True)
                controller.stop()  # before the gateway stops: a rollout is left where it is, on record
    finally:
        fleet.release_leases()
