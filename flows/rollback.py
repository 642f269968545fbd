"""Manual changes of the champion, from one command or one click in the Prefect UI:
`rollback` puts `previous` back as champion; `promote` makes an evaluated version champion.

Both move traffic first (serving the version if it is not running) and the aliases second,
in one Prefect transaction: if the alias move fails, traffic goes back. Who asked and why is
recorded on the versions and in an MLflow run of the `fledge-releases` experiment.

Both hold the model's lease (one operator at a time). A rollback is the emergency exit: it
preempts a release in progress, which then stops without putting anything back; a promotion
waits its turn (refused while another operator holds the model).
"""

from __future__ import annotations

import getpass

from prefect import flow, get_run_logger, runtime
from prefect.transactions import transaction
from pydantic import BaseModel, ConfigDict

from fledge.core import tags
from fledge.core.policy import ReleasePolicy
from fledge.core.tags import Status
from fledge.services import releases
from fledge.services.plane import connect_plane
from flows.run_policy import run_policy
from registry.refs import CHAMPION, PREVIOUS
from tasks import registry_steps, reporting, serving_steps
from tasks.common import workspace


class ChampionChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    kind: str  # rollback | promote
    champion_before: str
    champion_after: str
    requested_by: str
    reason: str
    mlflow_run_id: str
    flow_run_id: str


def _change_champion(model: str, new_version: str, kind: str, reason: str, requested_by: str,
                     policy: ReleasePolicy) -> ChampionChange:
    with serving_steps.model_lease(model, kind, f"{kind} of {model} to version {new_version} asked by {requested_by}",
                                   preempt=kind == "rollback"):
        return _change_champion_under_lease(model, new_version, kind, reason, requested_by, policy)


def _change_champion_under_lease(model: str, new_version: str, kind: str, reason: str, requested_by: str,
                                 policy: ReleasePolicy) -> ChampionChange:
    log = get_run_logger().info
    ws = workspace()
    plane = connect_plane(ws.home, model)
    running = plane.admin.rollout(model)
    if running is not None and running["end"] is None:
        if kind != "rollback":
            raise releases.ReleaseInputError(
                f"A rollout of {running['spec']['canary']} is in progress for {model} ({running['description']}). "
                f"Wait for it to end, or abort it first: `fledge rollout abort {model}`.")
        # The emergency exit: the rollout ends first (its controller puts traffic and aliases back
        # as before it), then this rollback goes on from there.
        serving_steps.abort_rollout(model, f"the rollback asked by {requested_by}")
    aliases = ws.registry.aliases(model)
    old_ref = f"{model}/{aliases[CHAMPION]}" if CHAMPION in aliases else None
    new_ref = f"{model}/{new_version}"
    flow_run_id = str(runtime.flow_run.id) if runtime.flow_run.id else "local"
    snapshot = releases.take_snapshot(ws.registry, model, plane.routes())
    run_id = registry_steps.start_release_run(
        kind, model, new_ref, old_ref or "-",
        params={"model": model, "kind": kind, "new_champion": new_ref, "old_champion": old_ref or "-"},
        run_tags={tags.RUN_REQUESTED_BY: requested_by, tags.RUN_FLOW_RUNS: flow_run_id,
                  tags.RUN_FLOW_RUN_URL: runtime.flow_run.ui_url or ""},
    )
    log(f"{kind}: {model} champion {old_ref} -> {new_ref}, asked by {requested_by}: {reason}")
    try:
        with transaction():
            serving_steps.switch_traffic(model, new_ref, policy.serving, snapshot.routes)
            registry_steps.promote_in_registry(model, new_ref, old_ref, snapshot.aliases)
            if kind == "rollback":
                registry_steps.delete_alias(model, PREVIOUS)  # the version rolled back from is not a rollback target
        retired = serving_steps.retire_others(model, new_ref) + serving_steps.stop_stale_staging(model, new_ref)
    except BaseException as error:
        registry_steps.finish_release_run(run_id, releases.ReleaseOutcome.FAILED, f"{type(error).__name__}: {error}")
        raise
    keys = tags.change_tags(kind)
    recorded = {keys["by"]: requested_by, keys["reason"]: reason or "-", keys["run_id"]: run_id,
                keys["flow_run_id"]: flow_run_id}
    registry_steps.record_status(new_ref, Status.CHAMPION, recorded)
    if old_ref:
        registry_steps.record_status(old_ref, Status.ROLLED_BACK if kind == "rollback" else Status.PREVIOUS, recorded)
    outcome = releases.ReleaseOutcome.ROLLED_BACK if kind == "rollback" else releases.ReleaseOutcome.PROMOTED
    registry_steps.finish_release_run(run_id, outcome, f"{kind} by {requested_by}: {reason or '-'}")
    reporting.notify(policy.notifications, model, outcome.value, f"{kind.capitalize()} of {model}: {old_ref or '-'} -> {new_ref}",
                     f"{kind} asked by {requested_by}: {reason or '-'}\nMLflow run: {run_id}\n"
                     f"Flow run: {runtime.flow_run.ui_url or flow_run_id}\n", manual=True)
    log(f"{new_ref} is the champion of {model} and takes all its traffic"
        + (f"; stopped {', '.join(retired)}" if retired else ""))
    return ChampionChange(model=model, kind=kind, champion_before=old_ref or "-", champion_after=new_ref,
                          requested_by=requested_by, reason=reason, mlflow_run_id=run_id, flow_run_id=flow_run_id)


@flow(name="rollback")
def rollback(model: str, reason: str = "", requested_by: str = "", policy: ReleasePolicy | None = None) -> ChampionChange:
    """Put MODEL@previous back as champion and send all traffic to it."""
    policy = run_policy(policy)
    target = releases.rollback_target(workspace().registry, model)
    return _change_champion(model, target, "rollback", reason, requested_by or getpass.getuser(), policy)


@flow(name="promote")
def promote(model: str, version: str, reason: str = "", requested_by: str = "", policy: ReleasePolicy | None = None,
            allow_unevaluated: bool = False) -> ChampionChange:
    """Make MODEL/VERSION the champion without a canary: for a version whose evaluation
    passed (its `fledge.eval.verdict` tag), e.g. after a release rejected only by a timeout."""
    policy = run_policy(policy)
    releases.promote_target(workspace().registry, model, version, allow_unevaluated)
    return _change_champion(model, version, "promote", reason, requested_by or getpass.getuser(), policy)
