"""Manual changes of the champion, from one command or one click in the Prefect UI:
`rollback` puts `previous` back as champion; `promote` makes an evaluated version champion.

Both move traffic first (serving the version if it is not running) and the aliases second,
in one Prefect transaction: if the alias move fails, traffic goes back. Who asked and why is
recorded on the versions and in an MLflow run of the `fledge-releases` experiment.
"""

from __future__ import annotations

import getpass

from prefect import flow, get_run_logger, runtime
from prefect.transactions import transaction
from pydantic import BaseModel, ConfigDict

from fledge import releases
from fledge.home import FledgeHome
from fledge.plane import connect_plane
from registry.refs import CHAMPION, PREVIOUS
from registry.status import Status
from tasks import registry_steps, serving_steps
from tasks.common import registry


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
                     policy_file: str | None) -> ChampionChange:
    log = get_run_logger().info
    home = FledgeHome.from_env().ensure()
    store = registry()
    plane = connect_plane(home, model)
    aliases = store.aliases(model)
    old_ref = f"{model}/{aliases[CHAMPION]}" if CHAMPION in aliases else None
    new_ref = f"{model}/{new_version}"
    flow_run_id = str(runtime.flow_run.id) if runtime.flow_run.id else "local"
    snapshot = releases.take_snapshot(store, model, plane.routes())
    run_id = releases.start_release_run(
        store, home, model, new_ref, old_ref or "-", params={"model": model, "kind": kind, "new_champion": new_ref,
                                                               "old_champion": old_ref or "-"},
        tags={"fledge.kind": kind, "fledge.requested_by": requested_by, "prefect.flow_run_ids": flow_run_id,
              "prefect.flow_run_url": runtime.flow_run.ui_url or ""},
    )
    log(f"{kind}: {model} champion {old_ref} -> {new_ref}, asked by {requested_by}: {reason}")
    try:
        with transaction():
            serving_steps.switch_traffic(model, new_ref, policy_file, snapshot.routes)
            registry_steps.promote_in_registry(model, new_ref, old_ref, snapshot.aliases)
            if kind == "rollback":
                # The version rolled back from is not a rollback target.
                store.delete_alias(model, PREVIOUS)
        retired = serving_steps.retire_others(model, new_ref)
    except BaseException as error:
        releases.finish_release_run(store, run_id, releases.ReleaseOutcome.FAILED, f"{type(error).__name__}: {error}")
        raise
    tags = {f"fledge.{kind}.by": requested_by, f"fledge.{kind}.reason": reason or "-", f"fledge.{kind}.run_id": run_id,
            f"fledge.{kind}.flow_run_id": flow_run_id}
    registry_steps.record_status(new_ref, Status.CHAMPION, tags)
    if old_ref:
        registry_steps.record_status(old_ref, Status.ROLLED_BACK if kind == "rollback" else Status.PREVIOUS, tags)
    outcome = releases.ReleaseOutcome.ROLLED_BACK if kind == "rollback" else releases.ReleaseOutcome.PROMOTED
    releases.finish_release_run(store, run_id, outcome, f"{kind} by {requested_by}: {reason or '-'}")
    log(f"{new_ref} is the champion of {model} and takes all its traffic"
        + (f"; stopped {', '.join(retired)}" if retired else ""))
    return ChampionChange(model=model, kind=kind, champion_before=old_ref or "-", champion_after=new_ref,
                          requested_by=requested_by, reason=reason, mlflow_run_id=run_id, flow_run_id=flow_run_id)


@flow(name="rollback")
def rollback(model: str, reason: str = "", requested_by: str = "", policy_file: str | None = None) -> ChampionChange:
    """Put MODEL@previous back as champion and send all traffic to it."""
    aliases = registry().aliases(model)
    if PREVIOUS not in aliases:
        raise ValueError(f"{model} has no 'previous' version to roll back to (aliases: "
                         f"{', '.join(f'{a} -> {v}' for a, v in sorted(aliases.items())) or 'none'}). "
                         f"Use `fledge promote {model} VERSION` to choose a version instead.")
    return _change_champion(model, aliases[PREVIOUS], "rollback", reason, requested_by or getpass.getuser(), policy_file)


@flow(name="promote")
def promote(model: str, version: str, reason: str = "", requested_by: str = "", policy_file: str | None = None,
            allow_unevaluated: bool = False) -> ChampionChange:
    """Make MODEL/VERSION the champion without a canary: for a version whose evaluation
    passed (its `fledge.eval.verdict` tag), e.g. after a release rejected only by a timeout."""
    info = registry().get_version(model, version)
    verdict = info.tags.get("fledge.eval.verdict")
    if verdict != "pass" and not allow_unevaluated:
        raise ValueError(f"{info.ref} has no passing evaluation (fledge.eval.verdict: {verdict or 'none'}). "
                         f"Release it with `fledge release {model} --version {version}`, or pass allow_unevaluated.")
    return _change_champion(model, version, "promote", reason, requested_by or getpass.getuser(), policy_file)
