"""Serving steps of a release: the canary through the gateway, the post-promotion watch, and
putting traffic back. Traffic changes are undone when the release's transaction rolls back."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction

from fledge.core.errors import FledgeError
from fledge.core.outcome import GateResult, Outcome
from fledge.core.policy import CanaryPolicy, ServingPolicy, WatchPolicy
from fledge.services import rollout
from fledge.services.leases import HeldLease, holder_name, holding
from fledge.services.plane import connect_plane, fleet_for, serve_version
from serving.canary.controller import RolloutState
from serving.canary.watch import judge_watch
from serving.canary.window import VersionWindow
from serving.gateway.leases import LeaseHeld
from serving.gateway.routes import Backend, RouteChangeRefused, RouteTable
from serving.naming import baseline_key, instance_key, stale_staging_copies
from tasks.common import TRANSIENT, preempted, say, workspace


class WatchBreach(FledgeError):
    def __init__(self, result: GateResult):
        self.result = result
        super().__init__("post-promotion watch: " + "; ".join(result.reasons))


@dataclass(frozen=True)
class CanaryInstances:
    candidate_url: str
    baseline_url: str | None  # None: the canary is judged against the stable instance
    adapter: bool = False  # the candidate is a LoRA adapter on the stable version's own server


@task(name="serve candidate", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def serve_candidate(model: str, candidate_ref: str, champion_ref: str, serving: ServingPolicy,
                    with_baseline: bool) -> CanaryInstances:
    """The instances the canary needs: the candidate, and (where the policy asks for one) the
    champion's baseline instance; the ones the evaluations used when they are still up, else
    new ones, started together."""
    ws, log = workspace(), say()
    plane = connect_plane(ws.home, model)
    wanted = {"candidate": (candidate_ref, False)}
    # A LoRA adapter runs on the champion's own server: its canary is judged against the stable
    # version there, so there is no baseline instance to compare with.
    adapter = ws.registry.resolve(candidate_ref).adapter_base is not None
    if with_baseline and not adapter:
        wanted["baseline"] = (champion_ref, True)
    with ThreadPoolExecutor(len(wanted)) as pool:
        starting = {role: pool.submit(serve_version, ws.registry, ws.home, serving, ref, plane.fleet, baseline)
                    for role, (ref, baseline) in wanted.items()}
        served = {role: future.result() for role, future in starting.items()}
    for role, (instance, started) in served.items():
        log(f"{role}: {wanted[role][0]} {'started' if started else 'already serving'} at {instance.base_url}")
    return CanaryInstances(served["candidate"][0].base_url, served["baseline"][0].base_url if "baseline" in served else None,
                           adapter)


@task(name="canary", cache_policy=NO_CACHE)
def run_canary(model: str, stable_ref: str, candidate_ref: str, instances: CanaryInstances, canary: CanaryPolicy,
               routes_before: dict) -> RolloutState:
    """The canary through the gateway (services.rollout.run_canary). If the release's
    transaction rolls back, the traffic split before the release comes back."""
    transaction = get_transaction()
    transaction.set("model", model)
    transaction.set("routes_before", routes_before)
    home = workspace().home
    plane = connect_plane(home, model)
    return rollout.run_canary(plane.admin, home.files.rollout(model), canary, model, stable_ref, candidate_ref,
                              instances.candidate_url, instances.baseline_url, log=say())


@run_canary.on_rollback
def _traffic_back(transaction: Transaction) -> None:
    _restore_unless_preempted(transaction.get("model"), transaction.get("routes_before"))


def _restore_unless_preempted(model: str, routes_before: dict | None) -> None:
    lost = preempted(model)
    if lost:
        say()(f"Traffic left as it is: {lost}")
        return
    restore_traffic.fn(model, routes_before)


@contextmanager
def model_lease(model: str, purpose: str, what: str, preempt: bool = False) -> Iterator[HeldLease]:
    """Hold MODEL's lease on the serving plane for the block: one operator at a time. Another
    holder is refused with who and since when (a rollback, `preempt`, takes it over)."""
    plane = connect_plane(workspace().home, model)
    try:
        with holding(plane.admin, model, purpose, holder_name(what), preempt=preempt) as held:
            say()(f"Holding the lease on {model} ({purpose}, lease {held.lease.token})")
            yield held
    except LeaseHeld as error:
        raise OperatorConflict(str(error)) from None


class OperatorConflict(FledgeError):
    """Another operator holds the model: the message names who, what for and since when."""


@task(name="restore traffic", cache_policy=NO_CACHE, **TRANSIENT)
def restore_traffic(model: str, routes_before: dict | None) -> None:
    """The split from before the release, on the instances that serve now (a restarted one
    answers on another port); backends with no live instance are left out, and when none of
    them lives the current stable keeps its traffic."""
    if routes_before is None:
        return
    plane = connect_plane(workspace().home, model)
    snapshot = RouteTable.model_validate(routes_before)
    live = {key: record.base_url for key in snapshot.backends if (record := plane.fleet.get(key)) is not None}
    try:
        table = snapshot.restored_on(live)
    except RouteChangeRefused as error:
        say()(f"Traffic not put back ({error}): the current split stays, on backends that answer")
        return
    plane.admin.put_routes(table)
    split = ", ".join(f"{b.version} {b.weight} %" for b in table.backends.values())
    say()(f"Traffic put back as before the release: {split}")


@task(name="previous champion's figures", cache_policy=NO_CACHE, **TRANSIENT)
def stable_figures(model: str, stable_ref: str, after_seq: int) -> VersionWindow:
    """What users of the previous champion saw while the canary ran (every observation the
    gateway numbered after `after_seq`): its stable instance and its baseline instance
    together (at a 50 % step the baseline serves all of them)."""
    plane = connect_plane(workspace().home, model)
    return VersionWindow.from_observations(stable_ref, plane.admin.observations(after=after_seq),
                                           route_keys={stable_ref, baseline_key(stable_ref)})


@task(name="post-promotion watch", cache_policy=NO_CACHE)
def watch_new_champion(model: str, new_ref: str, watch: WatchPolicy, poll_seconds: float,
                       previous: VersionWindow | None) -> GateResult:
    """Judge the new champion over the policy's window. A breach raises WatchBreach at once,
    which rolls the release's transaction back (aliases and traffic); so does a window that
    ends without a pass."""
    log = say()
    plane = connect_plane(workspace().home, model)
    # The window is every observation the gateway numbers from now on; its length is kept by
    # the monotonic clock, which never steps.
    after = plane.admin.sequence()
    end = time.monotonic() + watch.window_seconds
    log(f"Watching {new_ref} for {watch.window_seconds:g} s with the previous champion kept warm")
    while True:
        closed = time.monotonic() >= end
        figures = VersionWindow.from_observations(new_ref, plane.admin.observations(after=after))
        result = judge_watch(figures, previous, watch, window_closed=closed)
        if result.outcome is Outcome.FAIL:
            raise WatchBreach(result)
        if closed:
            break
        time.sleep(poll_seconds)
    if result.outcome is not Outcome.PASS:
        raise WatchBreach(result)
    log(f"Watch passed: {figures.requests} requests, TTFT p95 {figures.ms('ttft_s', 95) or 0:.0f} ms, "
        f"inter-token p95 {figures.ms('itl_s', 95) or 0:.0f} ms")
    return result


@task(name="retire instance", cache_policy=NO_CACHE)
def retire_instance(model: str, ref: str, baseline: bool = False, drain_seconds: float = 30.0) -> None:
    """Drain an instance out of the gateway (in-flight streams finish), then stop its server."""
    plane = connect_plane(workspace().home, model)
    key = instance_key(ref, baseline)
    table = plane.routes()
    if table is not None and key in table.backends:
        if len([b for b in table.backends.values() if not b.draining]) > 1:
            plane.admin.drain(key, deadline_s=drain_seconds)
        plane.admin.remove_backend(key)
    record = plane.fleet.records().get(key)
    stopped = plane.fleet.stop(key)
    say()(f"{key} removed from the gateway" + (
        (" and unloaded from its server" if record and record.adapter_of else " and its server stopped") if stopped else ""))
    # The server that held an adapter goes too once nothing routes to it and it holds no other.
    host = record.adapter_of if record else None
    table = plane.routes()
    if host and (table is None or host not in table.backends) and plane.fleet.stop(host):
        say()(f"{host} (which held {key}) stopped: nothing routes to it any more")


@task(name="stop instance", cache_policy=NO_CACHE)
def stop_instance(ref: str, baseline: bool = False) -> bool:
    return fleet_for(workspace().home).stop(instance_key(ref, baseline))


@task(name="stop stale staging copies", cache_policy=NO_CACHE)
def stop_stale_staging(model: str, champion_ref: str) -> list[str]:
    """Stop the staging copies of champions that are no longer the champion."""
    fleet = fleet_for(workspace().home)
    stale = stale_staging_copies(fleet.records(), model, champion_ref)
    for key in stale:
        fleet.stop(key)
    if stale:
        say()(f"stopped staging copies of former champions: {', '.join(stale)}")
    return stale


@task(name="switch traffic", cache_policy=NO_CACHE)
def switch_traffic(model: str, new_ref: str, serving: ServingPolicy, routes_before: dict | None) -> None:
    """All traffic to `new_ref` (served first if it is not running); the versions that served
    before stay registered at 0 %. Undone if the flow's transaction rolls back."""
    transaction = get_transaction()
    transaction.set("model", model)
    transaction.set("routes_before", routes_before)
    ws, log = workspace(), say()
    plane = connect_plane(ws.home, model)
    instance, started = serve_version(ws.registry, ws.home, serving, new_ref, plane.fleet)
    log(f"{new_ref} {'started' if started else 'already serving'} at {instance.base_url}")
    plane.admin.add_backend(model, Backend(version=new_ref, base_url=instance.base_url, role="canary"))
    plane.admin.put_routes(plane.routes().all_to(new_ref))
    log(f"All traffic of {model} now goes to {new_ref}")


@switch_traffic.on_rollback
def _switch_back(transaction: Transaction) -> None:
    _restore_unless_preempted(transaction.get("model"), transaction.get("routes_before"))


@task(name="retire old versions", cache_policy=NO_CACHE)
def retire_others(model: str, keep_ref: str) -> list[str]:
    table = connect_plane(workspace().home, model).routes()
    others = [key for key in (table.backends if table else {}) if key != keep_ref]
    for key in others:
        retire_instance.fn(model, key)
    return others
