"""The scheduled `release-watch`: every registered model whose `challenger` alias points at a
version that no release has decided yet gets a release started for it, unless a release run
of it is already scheduled, pending, running or paused (never a second run for one challenger)."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
                                            FlowRunFilterStateType)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from fledge.core.home import FledgeHome
from fledge.core.policy import ReleasePolicy
from fledge.core.tags import TAG_RELEASE_OUTCOME
from fledge.services.releases import load_record
from registry.refs import CHALLENGER
from registry.store import ModelRegistry
from flows.run_policy import run_policy
from tasks.common import workspace

RELEASE_DEPLOYMENT = "release/release"


def pending_challengers(store: ModelRegistry, home: FledgeHome) -> list[tuple[str, str]]:
    """(model, version) pairs: a challenger with no release outcome and no release running."""
    pending = []
    for name in store.model_names():
        version = store.aliases(name).get(CHALLENGER)
        if version is None:
            continue
        info = store.get_version(name, version)
        in_progress = load_record(home, name)
        if TAG_RELEASE_OUTCOME in info.tags or (in_progress is not None and in_progress.requested == info.ref):
            continue
        pending.append((name, version))
    return pending


UNFINISHED = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]


def unfinished_releases() -> set[tuple[str, str]]:
    """(model, candidate) of every `release` flow run not finished yet, as the Prefect API has
    them: a run still queued for a worker has written nothing to the Fledge home yet."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["release"])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=UNFINISHED))))
    return {(str(run.parameters.get("model")), str(run.parameters.get("candidate", CHALLENGER))) for run in runs}


def already_releasing(model: str, version: str, unfinished: set[tuple[str, str]]) -> bool:
    return (model, version) in unfinished or (model, CHALLENGER) in unfinished


@flow(name="release-watch")
def release_watch(policy: ReleasePolicy | None = None, in_process: bool = False) -> list[str]:
    """Start a release for each pending challenger: as a run of the `release` deployment (so
    it shows in the UI with its own logs and can be retried there, under that deployment's
    policy), or here, under this run's policy, when there is no such deployment or
    `in_process` is set."""
    log = get_run_logger().info
    policy = run_policy(policy)
    ws = workspace()
    unfinished = unfinished_releases()
    pending = []
    for name, version in pending_challengers(ws.registry, ws.home):
        if already_releasing(name, version, unfinished):
            log(f"{name}/{version}: a release run of it is already queued or running; not starting another")
        else:
            pending.append((name, version))
    if not pending:
        log("No challenger waiting for a release")
        return []
    started = []
    for name, version in pending:
        parameters = {"model": name, "candidate": version}
        log(f"{name}/{version} carries the challenger alias and has not been released: starting its release")
        if not in_process:
            try:
                run = run_deployment(RELEASE_DEPLOYMENT, parameters=parameters, timeout=0)
                started.append(f"{name}/{version}: flow run {run.id}")
                continue
            except ObjectNotFound:
                log(f"No {RELEASE_DEPLOYMENT} deployment: releasing in this run instead")
        from flows.release import release

        summary = release(**parameters, policy=policy)
        started.append(f"{name}/{version}: {summary.outcome.value}")
    return started
