"""What a release changes and how it is undone: the snapshot taken before it, the registry
transitions, the release record that lets a re-run continue, and the MLflow run that holds it.

No Prefect here: the flows call these through thin tasks. Every function is idempotent, so a
re-run after a crash can call it again.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fledge.home import FledgeHome
from registry.refs import CHALLENGER, CHAMPION, PREVIOUS
from registry.status import Status
from registry.store import ModelRegistry
from serving.gateway.routes import RouteTable

RELEASE_EXPERIMENT = "fledge-releases"
ROLES = (CHAMPION, CHALLENGER, PREVIOUS)

TAG_RELEASE_RUN = "fledge.release.run_id"
TAG_RELEASE_FLOW_RUN = "fledge.release.flow_run_id"
TAG_RELEASE_OUTCOME = "fledge.release.outcome"
TAG_RELEASE_REASON = "fledge.release.reason"
TAG_APPROVAL = "fledge.approval"
TAG_APPROVER = "fledge.approval.by"
TAG_APPROVAL_COMMENT = "fledge.approval.comment"


class ReleaseInputError(ValueError):
    """The release cannot start as asked; the message says what to change."""


class ReleaseOutcome(StrEnum):
    PROMOTED = "promoted"
    REJECTED = "rejected"  # a gate, an approver or a timeout said no before any traffic moved
    ROLLED_BACK = "rolled_back"  # the canary or the post-promotion watch said no
    FAILED = "failed"  # something broke; everything was put back


class Snapshot(BaseModel):
    """The registry aliases and the traffic split before a release touched them."""

    model_config = ConfigDict(extra="forbid")

    aliases: dict[str, str]
    routes: dict | None
    taken_at: float = Field(default_factory=time.time)


class ReleaseRecord(BaseModel):
    """The release in progress for a model, saved so a re-run continues it (same snapshot,
    same MLflow run) instead of starting another."""

    model_config = ConfigDict(extra="forbid")

    model: str
    candidate: str  # NAME/VERSION actually released (after quantization)
    requested: str  # NAME/VERSION the release started from
    champion: str
    snapshot: Snapshot
    mlflow_run_id: str
    flow_run_ids: list[str] = Field(default_factory=list)
    instances_started: list[str] = Field(default_factory=list)


def preflight(model: str, candidate: str, policy, auto_approve: bool, home: FledgeHome, registry: ModelRegistry):
    """Everything that can be refused before any work, with the fix: the versions exist, the
    candidate is not the champion, the gateway runs and serves the champion, approval can be
    given. Returns (candidate, champion, routes). The CLI calls it before starting a flow run
    so that bad input reads as one paragraph; the flow calls it again for UI-triggered runs."""
    from fledge.plane import connect_plane
    from registry.refs import parse_ref

    if auto_approve and policy.approval.required and policy.approval.approvers:
        raise ReleaseInputError(
            f"The policy allows only {', '.join(policy.approval.approvers)} to approve; --auto-approve cannot "
            "stand in for them. Run without it and answer the approval form in the Prefect UI."
        )
    ref = f"{model}/{candidate}" if str(candidate).isdigit() else f"{model}@{candidate}"
    candidate_version = registry.resolve(parse_ref(ref))
    in_progress = load_record(home, model)
    if in_progress is not None and in_progress.requested == candidate_version.ref:
        # A run of this release was killed, perhaps after the promotion: the record holds the
        # champion and the traffic from before it, and the re-run continues from there.
        champion = registry.get_version(model, in_progress.champion.rsplit("/", 1)[1])
        return candidate_version, champion, connect_plane(home, model).routes()
    champion = registry.resolve(f"{model}@{CHAMPION}")
    if candidate_version.ref == champion.ref:
        raise ReleaseInputError(f"{candidate_version.ref} is already the champion of {model}; nothing to release.")
    plane = connect_plane(home, model)
    routes = plane.routes()
    stable = routes.stable() if routes else None
    if stable is None or stable.version != champion.ref:
        raise ReleaseInputError(
            f"The gateway's stable version is {stable.version if stable else 'nothing'}, but the registry's champion is "
            f"{champion.ref}. Restart `fledge gateway {model}` so it serves the champion, then release again."
        )
    return candidate_version, champion, routes


def record_path(home: FledgeHome, model: str) -> Path:
    return home.state / f"release-{model.replace('/', '_')}.json"


def load_record(home: FledgeHome, model: str) -> ReleaseRecord | None:
    path = record_path(home, model)
    return ReleaseRecord.model_validate(json.loads(path.read_text())) if path.is_file() else None


def save_record(home: FledgeHome, record: ReleaseRecord) -> None:
    path = record_path(home, record.model)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(record.model_dump_json(indent=2))
    os.replace(handle.name, path)


def clear_record(home: FledgeHome, model: str) -> None:
    record_path(home, model).unlink(missing_ok=True)


def take_snapshot(registry: ModelRegistry, model: str, routes: RouteTable | None) -> Snapshot:
    aliases = {a: v for a, v in registry.aliases(model).items() if a in ROLES}
    return Snapshot(aliases=aliases, routes=routes.model_dump(mode="json") if routes else None)


def restore_aliases(registry: ModelRegistry, model: str, aliases: dict[str, str]) -> list[str]:
    """Put the release roles back as they were; returns what changed, in words."""
    current = registry.aliases(model)
    changes = []
    for role in ROLES:
        before, now = aliases.get(role), current.get(role)
        if before == now:
            continue
        if before is None:
            registry.delete_alias(model, role)
            changes.append(f"{role} removed (was {now})")
        else:
            registry.set_alias(model, role, before)
            changes.append(f"{role} -> {before} (was {now or 'unset'})")
    return changes


def promote_aliases(registry: ModelRegistry, model: str, new_version: str, old_version: str | None) -> None:
    """`champion` -> the new version, `previous` -> the old champion, `challenger` released."""
    if old_version and old_version != new_version:
        registry.set_alias(model, PREVIOUS, old_version)
        registry.set_status(model, old_version, Status.PREVIOUS)
    registry.set_alias(model, CHAMPION, new_version)
    registry.set_status(model, new_version, Status.CHAMPION)
    if registry.aliases(model).get(CHALLENGER) == new_version:
        registry.delete_alias(model, CHALLENGER)


def start_release_run(
    registry: ModelRegistry, home: FledgeHome, model: str, requested: str, champion: str, params: dict[str, str],
    tags: dict[str, str],
) -> str:
    from evals.tracking import start_run

    run_id = start_run(registry.client, f"release-{requested}", home.artifacts,
                       {"fledge.kind": "release", "fledge.model": model, "fledge.candidate": requested,
                        "fledge.champion": champion, **tags}, experiment_name=RELEASE_EXPERIMENT)
    for key, value in params.items():
        registry.client.log_param(run_id, key, value)
    return run_id


def log_artifact_text(registry: ModelRegistry, run_id: str, name: str, text: str | bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        registry.client.log_artifact(run_id, str(path))


def finish_release_run(registry: ModelRegistry, run_id: str, outcome: ReleaseOutcome, reason: str) -> None:
    registry.client.set_tag(run_id, "fledge.outcome", outcome.value)
    registry.client.set_tag(run_id, "fledge.reason", reason[:5000])
    registry.client.set_terminated(run_id, "FAILED" if outcome is ReleaseOutcome.FAILED else "FINISHED")


def last_releases(registry: ModelRegistry, model: str, limit: int = 5) -> list[dict[str, str]]:
    experiment = registry.client.get_experiment_by_name(RELEASE_EXPERIMENT)
    if experiment is None:
        return []
    runs = registry.client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`fledge.model` = '{model}'",
        order_by=["attributes.start_time DESC"], max_results=limit,
    )
    return [
        {
            "run_id": run.info.run_id,
            "candidate": run.data.tags.get("fledge.released", run.data.tags.get("fledge.candidate", "")),
            "champion": run.data.tags.get("fledge.champion", ""),
            "outcome": run.data.tags.get("fledge.outcome", "in progress"),
            "reason": run.data.tags.get("fledge.reason", ""),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.info.start_time / 1000)),
        }
        for run in runs
    ]
