"""Serving steps of a release, a rollback and a promotion: the instances a canary needs, the
rollout handed to the serving plane's controller (which runs the canary, the promotion and the
watch) and waited for, the model's lease, and putting traffic back. The rollback's and the
promotion's traffic switch is undone when their transaction rolls back."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction

import httpx

from fledge.core.errors import FledgeError
from fledge.core.policy import CanaryPolicy, ServingPolicy, ShadowPolicy, WatchPolicy
from fledge.services.controller import ManagedRollout, RolloutSpec
from fledge.services.instances import retire_instance as retire
from fledge.services.leases import HeldLease, holder_name, holding
from fledge.services.rollout import place_backend
from fledge.services.plane import PlaneNotRunning, connect_plane, fleet_for, serve_version
from fledge.services.plane_record import abort_and_wait
from serving.gateway.client import GatewayAdminError
from serving.gateway.leases import LeaseHeld
from serving.gateway.routes import Backend, RouteChangeRefused, RouteTable
from serving.naming import instance_key, stale_staging_copies
from tasks.common import TRANSIENT, preempted, say, workspace


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


@task(name="submit rollout", cache_policy=NO_CACHE, **TRANSIENT)
def submit_rollout(model: str, release_id: str, stable_ref: str, candidate_ref: str, instances: CanaryInstances,
                   canary: CanaryPolicy, watch: WatchPolicy, aliases_before: dict[str, str], routes_before: dict | None,
                   submitted_by: str, shadow: ShadowPolicy | None = None) -> ManagedRollout:
    """Hand the canary, the promotion and the watch to the serving plane's rollout controller
    (services.controller). Idempotent: a re-run of the release gets the rollout on record."""
    plane = connect_plane(workspace().home, model)
    spec = RolloutSpec(release_id=release_id, model=model, stable=stable_ref, canary=candidate_ref,
                       canary_url=instances.candidate_url, baseline_url=instances.baseline_url, canary_policy=canary,
                       watch_policy=watch, shadow_policy=shadow, aliases_before=aliases_before,
                       routes_before=routes_before, submitted_by=submitted_by)
    submitted = _managed(plane.admin.submit_rollout(spec.model_dump(mode="json")))
    say()(f"Rollout {submitted.id} submitted to the plane's controller: {submitted.describe()}")
    return submitted


def _managed(view: dict) -> ManagedRollout:
    return ManagedRollout.model_validate({k: v for k, v in view.items() if k not in ("description", "progress")})


@task(name="find rollout", cache_policy=NO_CACHE, **TRANSIENT)
def find_rollout(model: str, release_id: str) -> ManagedRollout | None:
    """The rollout an earlier run of this release submitted, running or ended."""
    view = connect_plane(workspace().home, model).admin.rollout(model)
    return _managed(view) if view is not None and view["spec"]["release_id"] == release_id else None


class RolloutLost(FledgeError):
    """The release stopped waiting: its lease went (a rollback took the model) or the plane
    stayed unreachable; the rollout, on record, is the controller's to end."""


@task(name="canary, promotion and watch", cache_policy=NO_CACHE)
def await_rollout(model: str, rollout_id: str, poll_seconds: float, patience_s: float,
                  stop_at_review: bool = False) -> ManagedRollout:
    """Wait for the controller to end the rollout, saying what it does as it goes. The plane
    not answering is waited out for `patience_s` (it resumes the rollout when it restarts).
    `stop_at_review`: return the running rollout as soon as it waits for a person's answer about
    its mirrored pairs, in any stage (the flow then asks in its approval form)."""
    log = say()
    said, unreachable_since, admin = None, None, None
    while True:
        try:
            admin = admin or connect_plane(workspace().home, model).admin
            view = admin.rollout(model)
            unreachable_since = None
        except (PlaneNotRunning, httpx.TransportError, GatewayAdminError) as error:
            if isinstance(error, GatewayAdminError) and not error.retryable:
                raise
            admin, unreachable_since = None, unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since > patience_s:
                raise RolloutLost(f"the serving plane has not answered for {patience_s:.0f} s ({error}); the rollout "
                                  "stays on record and its controller resumes it when the plane starts") from None
            time.sleep(poll_seconds)
            continue
        lost = preempted(model)
        if lost:
            raise RolloutLost(f"the release's lease is gone ({lost}); the rollout is the controller's to end")
        if view is None or view["id"] != rollout_id:
            raise RolloutLost(f"the plane has no record of rollout {rollout_id} any more")
        if view["progress"] != said:
            said = view["progress"]
            log(f"Rollout: {said}")
        current = _managed(view)
        if not current.running:
            return current
        if stop_at_review and current.review is not None and current.review.open:
            return current
        time.sleep(poll_seconds)


@task(name="answer the rollout's question", cache_policy=NO_CACHE, **TRANSIENT)
def answer_review(model: str, approve: bool, by: str, comment: str | None) -> None:
    """A person's answer to the discordance the rollout asked about."""
    connect_plane(workspace().home, model).admin.command_rollout(model, "approve" if approve else "reject", by, comment)


@task(name="abort rollout", cache_policy=NO_CACHE)
def abort_rollout(model: str, by: str, release_id: str | None = None, timeout_s: float = 120.0) -> ManagedRollout | None:
    """Abort the model's running rollout (only the given release's, with `release_id`) and wait
    until the controller has put traffic and aliases back; None when there was none to abort."""
    try:
        admin = connect_plane(workspace().home, model).admin
    except PlaneNotRunning:
        return None  # the plane's next start resumes it; its abort then is the operator's
    view = abort_and_wait(admin, model, by, release_id, timeout_s)
    if view is None:
        return None
    if view["end"] is None:
        raise RolloutLost(f"the controller did not end rollout {view['id']} within {timeout_s:.0f} s of the abort")
    say()(f"Rollout {view['id']} aborted: {view['description']}")
    return _managed(view)


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


@task(name="retire instance", cache_policy=NO_CACHE)
def retire_instance(model: str, ref: str, baseline: bool = False, drain_seconds: float = 30.0) -> None:
    """Drain an instance out of the gateway (in-flight streams finish), then stop its server."""
    plane = connect_plane(workspace().home, model)
    retire(plane.admin, plane.fleet, instance_key(ref, baseline), drain_seconds, log=say())


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
    # Registered at 0 % unless it is already (the version may be serving as stable: a rollback
    # to the champion a rollout was just aborted back to).
    place_backend(plane.admin, model, Backend(version=new_ref, base_url=instance.base_url, role="canary"))
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


@task(name="stop this host's servers", cache_policy=NO_CACHE)
def stop_local_servers() -> list[str]:
    """Every vLLM server of this worker's home: a GPU step's evaluation servers end with it."""
    from fledge.services.plane import stop_serving

    return stop_serving(workspace().home)
