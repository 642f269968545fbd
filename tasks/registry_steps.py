"""Registry steps of a release: resolve, verify, record, move aliases (undone on rollback)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction

from fledge import releases
from registry.status import TAG_STATUS, Status
from tasks.common import TRANSIENT, home, policy, registry, say


@task(name="check release", cache_policy=NO_CACHE, **TRANSIENT)
def check_release(model: str, candidate: str, policy_file: str | None, auto_approve: bool):
    """The candidate (a version number or an alias) and the champion, with the gateway's
    routes; refuses a release that cannot go through, saying why."""
    candidate_version, champion, routes = releases.preflight(model, candidate, policy(policy_file), auto_approve, home(),
                                                             registry())
    say()(f"Releasing {candidate_version.ref} against the champion {champion.ref}")
    return candidate_version, champion, routes


@task(name="verify artifact", cache_policy=NO_CACHE, **TRANSIENT)
def verify_artifact(ref: str) -> str:
    """Materialize with every checksum verified and the checkpoint checked for vLLM."""
    from serving.engine import supported_architectures

    directory = registry().materialize(ref, home().checkpoints, supported_architectures())
    say()(f"{ref}: every file matches its manifest; the checkpoint is servable")
    return str(directory)


@task(name="record status", cache_policy=NO_CACHE, **TRANSIENT)
def record_status(ref: str, status: Status, tags: dict[str, str] | None = None) -> None:
    name, version = ref.rsplit("/", 1)
    registry().set_tags(name, version, {TAG_STATUS: status.value, **(tags or {})})


@task(name="promote in registry", cache_policy=NO_CACHE, **TRANSIENT)
def promote_in_registry(model: str, new_ref: str, old_ref: str | None, snapshot_aliases: dict[str, str]) -> None:
    """champion -> the new version, previous -> the old champion. Undone if the release's
    transaction rolls back (a failed watch, a crash in a later step)."""
    from prefect.transactions import get_transaction

    get_transaction().set("model", model)
    get_transaction().set("aliases_before", snapshot_aliases)
    old_version = old_ref.rsplit("/", 1)[1] if old_ref else None
    releases.promote_aliases(registry(), model, new_ref.rsplit("/", 1)[1], old_version)
    say()(f"Registry: {model}@champion -> {new_ref}" + (f", {model}@previous -> {old_ref}" if old_ref else ""))


@promote_in_registry.on_rollback
def _put_aliases_back(transaction: Transaction) -> None:
    model = transaction.get("model")
    changes = releases.restore_aliases(registry(), model, transaction.get("aliases_before"))
    say()(f"Registry put back as before the release: {'; '.join(changes) or 'nothing had changed'}")


@task(name="restore registry", cache_policy=NO_CACHE, **TRANSIENT)
def restore_registry(model: str, aliases: dict[str, str]) -> list[str]:
    return releases.restore_aliases(registry(), model, aliases)
