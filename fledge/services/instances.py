"""Taking an instance out of service: what a release, a rollback and the rollout controller
all do when a version stops serving."""

from __future__ import annotations

from typing import Callable

from serving.fleet import Fleet
from serving.gateway.client import GatewayAdmin


def retire_instance(admin: GatewayAdmin, fleet: Fleet, key: str, drain_seconds: float = 30.0,
                    log: Callable[[str], None] = print) -> None:
    """Drain an instance out of the gateway (in-flight streams finish), remove its backend,
    then stop its server (an adapter: unload it); the server that held an adapter goes too
    once nothing routes to it and it holds no other. Idempotent."""
    table = admin.routes()
    routed = table is not None and key in table.backends
    if routed:
        if len([b for b in table.backends.values() if not b.draining]) > 1:
            admin.drain(key, deadline_s=drain_seconds)
        admin.remove_backend(key)
    record = fleet.records().get(key)
    stopped = fleet.stop(key)
    if routed or stopped:
        log(f"{key} " + " and ".join(
            (["removed from the gateway"] if routed else [])
            + (["unloaded from its server" if record and record.adapter_of else "its server stopped"] if stopped else [])))
    host = record.adapter_of if record else None
    table = admin.routes()
    if host and (table is None or host not in table.backends) and fleet.stop(host):
        log(f"{host} (which held {key}) stopped: nothing routes to it any more")
