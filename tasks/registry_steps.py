"""Registry and run-record steps of a release: resolve, verify, record, move aliases (undone
on rollback). Each a task, so it is retried, logged and visible in the flow run."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction

from fledge.core.policy import ReleasePolicy
from fledge.core.tags import Status
from fledge.services import releases
from registry.roles import promote_aliases, restore_aliases
from serving.engine import supported_architectures
from tasks.common import TRANSIENT, preempted, say, workspace


@task(name="check release", cache_policy=NO_CACHE, **TRANSIENT)
def check_release(model: str, candidate: str, policy: ReleasePolicy, auto_approve: bool) -> releases.ReleaseTarget:
    """The candidate (a version number or an alias) and the champion, with the gateway's
    routes; refuses a release that cannot go through, saying why."""
    target = releases.preflight(model, candidate, policy, auto_approve, workspace())
    say()(f"Releasing {target.candidate.ref} against the champion {target.champion.ref}")
    return target


@task(name="verify artifact", cache_policy=NO_CACHE, **TRANSIENT)
def verify_artifact(ref: str) -> str:
    """Materialize with every checksum verified and the checkpoint checked for vLLM."""
    ws = workspace()
    directory = ws.registry.materialize(ref, ws.home.checkpoints, supported_architectures())
    say()(f"{ref}: every file matches its manifest; the checkpoint is servable")
    return str(directory)


@task(name="record status", cache_policy=NO_CACHE, **TRANSIENT)
def record_status(ref: str, status: Status, tags: dict[str, str] | None = None) -> None:
    releases.record_status(workspace().registry, ref, status, tags)


@task(name="tag versions", cache_policy=NO_CACHE, **TRANSIENT)
def tag_versions(refs: list[str], tags: dict[str, str]) -> None:
    registry = workspace().registry
    for ref in dict.fromkeys(refs):
        name, version = ref.rsplit("/", 1)
        registry.set_tags(name, version, tags)


@task(name="promote in registry", cache_policy=NO_CACHE, **TRANSIENT)
def promote_in_registry(model: str, new_ref: str, old_ref: str | None, snapshot_aliases: dict[str, str]) -> None:
    """champion -> the new version, previous -> the old champion. Undone if the release's
    transaction rolls back (a failed watch, a crash in a later step)."""
    get_transaction().set("model", model)
    get_transaction().set("aliases_before", snapshot_aliases)
    old_version = old_ref.rsplit("/", 1)[1] if old_ref else None
    promote_aliases(workspace().registry, model, new_ref.rsplit("/", 1)[1], old_version)
    say()(f"Registry: {model}@champion -> {new_ref}" + (f", {model}@previous -> {old_ref}" if old_ref else ""))


@promote_in_registry.on_rollback
def _put_aliases_back(transaction: Transaction) -> None:
    model = transaction.get("model")
    lost = preempted(model)
    if lost:
        say()(f"Registry left as it is: {lost}")
        return
    changes = restore_aliases(workspace().registry, model, transaction.get("aliases_before"))
    say()(f"Registry put back as before the release: {'; '.join(changes) or 'nothing had changed'}")


@task(name="restore registry", cache_policy=NO_CACHE, **TRANSIENT)
def restore_registry(model: str, aliases: dict[str, str]) -> list[str]:
    return restore_aliases(workspace().registry, model, aliases)


@task(name="delete alias", cache_policy=NO_CACHE, **TRANSIENT)
def delete_alias(model: str, alias: str) -> None:
    workspace().registry.delete_alias(model, alias)


# ---- the release's MLflow run -------------------------------------------------------------------

@task(name="start release run", cache_policy=NO_CACHE, **TRANSIENT)
def start_release_run(kind: str, model: str, requested: str, champion: str, params: dict[str, str],
                      run_tags: dict[str, str], policy: ReleasePolicy | None = None) -> str:
    runs = workspace().registry.runs
    run_id = releases.start_release_run(runs, kind, model, requested, champion, params, run_tags)
    if policy is not None:
        releases.record_policy(runs, run_id, policy)
    return run_id


@task(name="tag release run", cache_policy=NO_CACHE, **TRANSIENT)
def tag_run(run_id: str, tags: dict[str, str]) -> None:
    workspace().registry.runs.set_tags(run_id, tags)


@task(name="finish release run", cache_policy=NO_CACHE, **TRANSIENT)
def finish_release_run(run_id: str, outcome: releases.ReleaseOutcome, reason: str,
                       stage_seconds: dict[str, float] | None = None) -> None:
    runs = workspace().registry.runs
    if stage_seconds:
        runs.log_metrics(run_id, {f"seconds.{stage.replace(' ', '_')}": seconds for stage, seconds in stage_seconds.items()})
    releases.finish_release_run(runs, run_id, outcome, reason)


HANDED_BACK = "dispatch"  # the folder of the release's MLflow run holding its dispatched steps' results


@task(name="hand back result", cache_policy=NO_CACHE, **TRANSIENT)
def hand_back(run_id: str, flow_run_id: str, payload_json: str) -> str:
    """A dispatched step's result (the step's flow run FLOW_RUN_ID), stored as an artifact of the
    release's MLflow run RUN_ID through the tracking server's proxied artifact store, which the
    release's host reads too. Returns its path in the run."""
    workspace().registry.runs.log_text(run_id, f"{flow_run_id}.json", payload_json, folder=HANDED_BACK)
    return f"{HANDED_BACK}/{flow_run_id}.json"


@task(name="read handed-back result", cache_policy=NO_CACHE, **TRANSIENT)
def read_handed_back(run_id: str, flow_run_id: str) -> str:
    return workspace().registry.runs.artifact_text(run_id, f"{HANDED_BACK}/{flow_run_id}.json")
