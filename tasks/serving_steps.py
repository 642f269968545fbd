"""Serving steps of a release: the canary through the gateway, the post-promotion watch, and
putting traffic back. Traffic changes are undone when the release's transaction rolls back."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction

from fledge.outcome import GateResult, Outcome
from fledge.plane import connect_plane, instance_key, serve_version
from fledge.rollout import add_baseline, add_canary, rollout_state_path
from serving.canary.analysis import CanaryAnalysis
from serving.canary.controller import Action, RolloutState
from serving.canary.driver import RolloutDriver, load_state
from serving.canary.watch import ServiceFigures, judge_watch
from serving.gateway.routes import RouteTable, baseline_key
from tasks.common import TRANSIENT, home, policy, registry, say


@task(name="serve candidate", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=5)
def serve_candidate(model: str, candidate_ref: str, champion_ref: str, policy_path: str | None) -> dict[str, str | None]:
    """The instances the canary needs: the candidate, and (where the policy asks for one) a
    baseline instance of the champion; the ones the evaluations used when they are still up,
    else new ones, started together. Returns their base URLs ("baseline" None without one)."""
    plane, release_policy, store, log = connect_plane(home(), model), policy(policy_path), registry(), say()
    wanted = {"candidate": (candidate_ref, False)}
    if release_policy.canary.baseline_instance:
        wanted["baseline"] = (champion_ref, True)  # the evaluations' staging copy of the champion
    with ThreadPoolExecutor(len(wanted)) as pool:
        starting = {role: pool.submit(serve_version, store, home(), release_policy, ref, plane.fleet, staging)
                    for role, (ref, staging) in wanted.items()}
        served = {role: future.result() for role, future in starting.items()}
    for role, (instance, started) in served.items():
        log(f"{role}: {wanted[role][0]} {'started' if started else 'already serving'} at {instance.base_url}")
    return {"candidate": served["candidate"][0].base_url,
            "baseline": served["baseline"][0].base_url if "baseline" in served else None}


def _on_tick(log):
    def tick(state: RolloutState, analysis: CanaryAnalysis | None, action: Action) -> None:
        if action.kind.value != "wait" or (analysis and analysis.outcome is not Outcome.PASS and action.counts_as_inconclusive):
            log(f"Canary {state.canary_weight:3d} %: {action.kind.value} - {action.reason}")
    return tick


@task(name="canary", cache_policy=NO_CACHE)
def run_canary(model: str, stable_ref: str, candidate_ref: str, urls: dict[str, str | None], policy_path: str | None,
               routes_before: dict) -> RolloutState:
    """Step the candidate's share of traffic up as the policy says, analysing each window
    against the baseline instance (`urls["baseline"]`) or, without one, the stable version; a
    saved rollout of this candidate is resumed, not restarted. If the release's transaction
    rolls back, the traffic split before the release comes back."""
    transaction = get_transaction()
    transaction.set("model", model)
    transaction.set("routes_before", routes_before)
    log, fledge_home = say(), home()
    plane = connect_plane(fledge_home, model)
    state_path = rollout_state_path(fledge_home, model)
    driver = RolloutDriver(plane.admin, policy(policy_path).canary, state_path, on_tick=_on_tick(log))
    saved = load_state(state_path)
    table = plane.routes()

    def missing(key: str, url: str) -> bool:
        return table is None or key not in table.backends or table.backends[key].base_url != url

    if missing(candidate_ref, urls["candidate"]):
        add_canary(plane.admin, model, candidate_ref, urls["candidate"])
    baseline = baseline_key(stable_ref) if urls.get("baseline") else None
    if baseline and missing(baseline, urls["baseline"]):
        add_baseline(plane.admin, model, stable_ref, urls["baseline"])
    if saved is not None and (saved.stable, saved.canary, saved.baseline) == (stable_ref, candidate_ref, baseline):
        if saved.phase.terminal:
            log(f"The canary of {candidate_ref} had already ended ({saved.phase.value}) before this run")
            return saved
        log(f"Resuming the canary of {candidate_ref} at {saved.canary_weight} % (step {saved.step + 1})")
        return driver.resume()
    state_path.unlink(missing_ok=True)
    against = f"a baseline instance of {stable_ref}" if baseline else stable_ref
    log(f"Canary of {candidate_ref} against {against}: steps {policy(policy_path).canary.steps} %")
    return driver.start(model, stable_ref, candidate_ref, baseline)


@run_canary.on_rollback
def _traffic_back(transaction: Transaction) -> None:
    restore_traffic.fn(transaction.get("model"), transaction.get("routes_before"))


@task(name="restore traffic", cache_policy=NO_CACHE, **TRANSIENT)
def restore_traffic(model: str, routes_before: dict | None) -> None:
    if routes_before is None:
        return
    plane = connect_plane(home(), model)
    table = RouteTable.model_validate(routes_before)
    plane.admin.put_routes(table)
    split = ", ".join(f"{b.version} {b.weight} %" for b in table.backends.values())
    say()(f"Traffic put back as before the release: {split}")


@task(name="previous champion's figures", cache_policy=NO_CACHE, **TRANSIENT)
def stable_figures(model: str, stable_ref: str, since: float) -> ServiceFigures:
    """What users of the previous champion saw while the canary ran: its stable instance and
    its baseline instance together (at a 50 % step the baseline serves all of them)."""
    plane = connect_plane(home(), model)
    mine = {stable_ref, baseline_key(stable_ref)}
    observations = [replace(o, version=stable_ref) for o in plane.admin.observations(since=since) if o.version in mine]
    return ServiceFigures.from_observations(stable_ref, observations)


@task(name="retire baseline", cache_policy=NO_CACHE)
def retire_baseline(model: str, stable_ref: str, drain_seconds: float = 30.0) -> None:
    """After a promotion: the baseline instance out of the gateway (its streams finish), then stopped."""
    plane, key = connect_plane(home(), model), baseline_key(stable_ref)
    table = plane.routes()
    if table is not None and key in table.backends:
        plane.admin.drain(key, deadline_s=drain_seconds)
        plane.admin.remove_backend(key)
    if plane.fleet.stop(instance_key(stable_ref, staging=True)):
        say()(f"Baseline instance of {stable_ref} stopped")


class WatchBreach(RuntimeError):
    def __init__(self, result: GateResult):
        self.result = result
        super().__init__("post-promotion watch: " + "; ".join(result.reasons))


@task(name="post-promotion watch", cache_policy=NO_CACHE)
def watch_new_champion(model: str, new_ref: str, policy_path: str | None, previous: ServiceFigures | None) -> GateResult:
    """Judge the new champion over the policy's window. A breach raises WatchBreach at once,
    which rolls the release's transaction back (aliases and traffic); so does a window that
    ends without a pass."""
    release_policy, log = policy(policy_path), say()
    plane = connect_plane(home(), model)
    started = time.time()
    end = started + release_policy.watch.window_seconds
    log(f"Watching {new_ref} for {release_policy.watch.window_seconds:g} s with the previous champion kept warm")
    while True:
        figures = ServiceFigures.from_observations(new_ref, plane.admin.observations(since=started))
        result = judge_watch(figures, previous, release_policy.watch)
        if result.outcome is Outcome.FAIL:
            raise WatchBreach(result)
        if time.time() >= end:
            break
        time.sleep(release_policy.canary.analysis_interval_seconds)
    if result.outcome is not Outcome.PASS:
        raise WatchBreach(result)
    log(f"Watch passed: {figures.requests} requests, TTFT p95 {figures.ttft_p95_ms or 0:.0f} ms, "
        f"inter-token p95 {figures.itl_p95_ms or 0:.0f} ms")
    return result


@task(name="retire instance", cache_policy=NO_CACHE)
def retire_instance(model: str, ref: str, drain_seconds: float = 30.0) -> None:
    """Drain a version out of the gateway (in-flight streams finish), then stop its server."""
    plane = connect_plane(home(), model)
    table = plane.routes()
    if table is not None and ref in table.backends:
        if len([b for b in table.backends.values() if not b.draining]) > 1:
            plane.admin.drain(ref, deadline_s=drain_seconds)
        plane.admin.remove_backend(ref)
    stopped = plane.fleet.stop(instance_key(ref))
    say()(f"{ref} removed from the gateway" + (" and its server stopped" if stopped else ""))


@task(name="stop instance", cache_policy=NO_CACHE)
def stop_instance(ref: str, staging: bool = False) -> bool:
    from fledge.plane import fleet_for

    return fleet_for(home()).stop(instance_key(ref, staging))


@task(name="switch traffic", cache_policy=NO_CACHE)
def switch_traffic(model: str, new_ref: str, policy_path: str | None, routes_before: dict | None) -> None:
    """All traffic to `new_ref` (served first if it is not running); the versions that served
    before are drained out of the gateway and stopped. Undone if the flow's transaction rolls back."""
    transaction = get_transaction()
    transaction.set("model", model)
    transaction.set("routes_before", routes_before)
    log, fledge_home = say(), home()
    plane = connect_plane(fledge_home, model)
    instance, started = serve_version(registry(), fledge_home, policy(policy_path), new_ref, plane.fleet)
    log(f"{new_ref} {'started' if started else 'already serving'} at {instance.base_url}")
    add_canary(plane.admin, model, new_ref, instance.base_url)
    table = plane.routes()
    backends = {v: b.model_copy(update={"role": "canary", "weight": 0}) for v, b in table.backends.items()}
    backends[new_ref] = backends[new_ref].model_copy(update={"role": "stable", "weight": 100})
    plane.admin.put_routes(table.model_copy(update={"backends": backends}))
    log(f"All traffic of {model} now goes to {new_ref}")


@switch_traffic.on_rollback
def _switch_back(transaction: Transaction) -> None:
    restore_traffic.fn(transaction.get("model"), transaction.get("routes_before"))


@task(name="retire old versions", cache_policy=NO_CACHE)
def retire_others(model: str, keep_ref: str) -> list[str]:
    plane = connect_plane(home(), model)
    table = plane.routes()
    others = [v for v in (table.backends if table else {}) if v != keep_ref]
    for ref in others:
        retire_instance.fn(model, ref)
    return others
