"""What a release changes and how it is undone: the snapshot taken before it, the registry
transitions, the release record that lets a re-run continue, and the MLflow run that holds it.

No Prefect here: the flows call these through thin tasks. Every function is idempotent, so a
re-run after a crash can call it again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from fledge.core import tags
from fledge.core.errors import FledgeError
from fledge.core.home import FledgeHome
from fledge.core.overrides import check_run_policy
from fledge.core.policy import ReleasePolicy
from fledge.core.state import read_json, write_atomic
from fledge.core.tags import Status
from fledge.services.approval import Requester
from fledge.services.context import Workspace
from fledge.services.leases import held_lease
from fledge.services.plane import connect_plane
from registry.adapters import adapter_base_problem
from registry.refs import CHAMPION, PREVIOUS, parse_ref
from registry.roles import ROLES
from registry.runs import RunRecorder
from registry.store import ModelRegistry, VersionInfo
from serving.gateway.leases import held_by
from serving.gateway.routes import RouteTable

class ReleaseInputError(FledgeError):
    """The release (or rollback, or promotion) cannot start as asked; the message says what to change."""


class ReleaseOutcome(StrEnum):
    PROMOTED = "promoted"
    REJECTED = "rejected"  # a gate, an approver or a timeout said no before any traffic moved
    ROLLED_BACK = "rolled_back"  # the canary or the post-promotion watch said no
    FAILED = "failed"  # something broke; everything was put back
    PREEMPTED = "preempted"  # an operator took the model over (a rollback): nothing was put back, the state is theirs


STATUS_AFTER = {ReleaseOutcome.PROMOTED: Status.CHAMPION, ReleaseOutcome.REJECTED: Status.REJECTED,
                ReleaseOutcome.ROLLED_BACK: Status.ROLLED_BACK, ReleaseOutcome.FAILED: Status.CANDIDATE,
                ReleaseOutcome.PREEMPTED: Status.CANDIDATE}


class Snapshot(BaseModel):
    """The registry aliases and the traffic split before a release touched them."""

    model_config = ConfigDict(extra="forbid")

    aliases: dict[str, str]
    routes: dict | None
    taken_at: float = Field(default_factory=time.time)


class ReleaseRecord(BaseModel):
    """The release in progress for a model, saved so a re-run continues it (same snapshot,
    same MLflow run, same policy content) instead of starting another."""

    model_config = ConfigDict(extra="forbid")

    model: str
    candidate: str  # NAME/VERSION actually released (after quantization)
    requested: str  # NAME/VERSION the release started from
    champion: str
    snapshot: Snapshot
    mlflow_run_id: str
    policy: ReleasePolicy  # the content every gate of this release uses, whatever the file says later
    flow_run_ids: list[str] = Field(default_factory=list)
    audit_seq: int = 0  # the gateway's audit log before the release: the release's MLflow run carries what follows
    requester: Requester = Field(default_factory=lambda: Requester(name="unidentified", how="unidentified"))


@dataclass(frozen=True)
class ReleaseTarget:
    """What a release starts from: the candidate, the champion it is judged against, the traffic."""

    candidate: VersionInfo
    champion: VersionInfo
    routes: RouteTable | None
    audit_seq: int = 0  # the newest entry of the gateway's audit log when the release was checked


def _candidate_ref(model: str, candidate: str) -> str:
    return f"{model}/{candidate}" if str(candidate).isdigit() else f"{model}@{candidate}"


def preflight(model: str, candidate: str, policy: ReleasePolicy, auto_approve: bool, workspace: Workspace) -> ReleaseTarget:
    """Everything that can be refused before any work, with the fix: the versions exist, the
    candidate is not the champion, the gateway runs and serves the champion, approval can be
    given. The CLI calls it before starting a flow run so that bad input reads as one
    paragraph; the flow calls it again for UI-triggered runs."""
    check_run_policy(policy, policy, auto_approve)  # the flow's own rule: auto-approval only where the policy permits it
    registry = workspace.registry
    candidate_version = registry.resolve(parse_ref(_candidate_ref(model, candidate)))
    in_progress = load_record(workspace.home, model)
    plane = connect_plane(workspace.home, model)
    held = plane.admin.leases().get(model)
    if held is not None and held_lease(model) is None:
        raise ReleaseInputError(held_by(held))
    if in_progress is not None and in_progress.requested == candidate_version.ref:
        # A run of this release was killed, perhaps after the promotion: the record holds the
        # champion and the traffic from before it, and the re-run continues from there.
        champion = registry.get_version(model, in_progress.champion.rsplit("/", 1)[1])
        return ReleaseTarget(candidate_version, champion, plane.routes(), in_progress.audit_seq)
    champion = registry.resolve(f"{model}@{CHAMPION}")
    if candidate_version.ref == champion.ref:
        raise ReleaseInputError(f"{candidate_version.ref} is already the champion of {model}; nothing to release.")
    adapter_problem = adapter_base_problem(candidate_version.ref, candidate_version.adapter_base,
                                           champion.ref, champion.adapter_base)
    if adapter_problem:
        raise ReleaseInputError(adapter_problem)
    if candidate_version.adapter_base and not policy.serving.lora.enabled:
        raise ReleaseInputError(
            f"{candidate_version.ref} is a LoRA adapter, and the policy's servers do not take adapters "
            "(serving.lora.enabled is false). Enable it and restart the gateway, so the base's server runs with LoRA.")
    routes = plane.routes()
    stable = routes.stable() if routes else None
    if stable is None or stable.version != champion.ref:
        raise ReleaseInputError(
            f"The gateway's stable version is {stable.version if stable else 'nothing'}, but the registry's champion is "
            f"{champion.ref}. Restart `fledge gateway {model}` so it serves the champion, then release again."
        )
    return ReleaseTarget(candidate_version, champion, routes, plane.admin.audit_seq())


def rollback_target(registry: ModelRegistry, model: str) -> str:
    """The version `rollback` makes champion: `previous`, or a refusal that says what to do."""
    aliases = registry.aliases(model)
    if PREVIOUS not in aliases:
        listed = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
        raise ReleaseInputError(
            f"{model} has no 'previous' version to roll back to (aliases: {listed}): no release has replaced a "
            f"champion since the last rollback. Use `fledge promote {model}/VERSION` to choose a version instead.")
    return aliases[PREVIOUS]


def promote_target(registry: ModelRegistry, model: str, version: str, allow_unevaluated: bool) -> VersionInfo:
    """The version `promote` makes champion, refused unless its evaluation passed."""
    info = registry.get_version(model, version)
    verdict = info.tags.get(tags.TAG_EVAL_VERDICT)
    if verdict != "pass" and not allow_unevaluated:
        raise ReleaseInputError(
            f"{info.ref} has no passing evaluation ({tags.TAG_EVAL_VERDICT}: {verdict or 'none'}). "
            f"Release it with `fledge release {model} --version {version}`, or pass allow_unevaluated.")
    return info


# ---- the release record -----------------------------------------------------------------------

def load_record(home: FledgeHome, model: str) -> ReleaseRecord | None:
    saved = read_json(home.files.release(model))
    return None if saved is None else ReleaseRecord.model_validate(saved)


def save_record(home: FledgeHome, record: ReleaseRecord) -> None:
    write_atomic(home.files.release(record.model), record.model_dump_json(indent=2))


def clear_record(home: FledgeHome, model: str) -> None:
    home.files.release(model).unlink(missing_ok=True)


# ---- registry transitions ---------------------------------------------------------------------

def take_snapshot(registry: ModelRegistry, model: str, routes: RouteTable | None) -> Snapshot:
    aliases = {a: v for a, v in registry.aliases(model).items() if a in ROLES}
    return Snapshot(aliases=aliases, routes=routes.model_dump(mode="json") if routes else None)


def record_status(registry: ModelRegistry, ref: str, status: Status, extra: dict[str, str] | None = None) -> None:
    name, version = ref.rsplit("/", 1)
    registry.set_status(name, version, status, **(extra or {}))


# ---- the release's MLflow run -----------------------------------------------------------------

def start_release_run(runs: RunRecorder, kind: str, model: str, requested: str, champion: str,
                      params: dict[str, str], run_tags: dict[str, str] | None = None) -> str:
    """One run in `fledge-releases` per release, rollback or promotion."""
    run_id = runs.start(tags.RELEASE_EXPERIMENT, f"{kind}-{requested}", {
        tags.RUN_KIND: kind, tags.RUN_MODEL: model, tags.RUN_CANDIDATE: requested, tags.RUN_CHAMPION: champion,
        **(run_tags or {})})
    runs.log_params(run_id, params)
    return run_id


def record_policy(runs: RunRecorder, run_id: str, policy: ReleasePolicy) -> None:
    """The exact policy content the release's gates use, and its hash."""
    runs.log_text(run_id, "policy.json", policy.model_dump_json(indent=2))
    runs.set_tags(run_id, {tags.RUN_POLICY_HASH: policy.content_hash})


def finish_release_run(runs: RunRecorder, run_id: str, outcome: ReleaseOutcome, reason: str) -> None:
    runs.set_tags(run_id, {tags.RUN_OUTCOME: outcome.value, tags.RUN_REASON: reason[:5000]})
    runs.finish(run_id, failed=outcome is ReleaseOutcome.FAILED)


def last_releases(runs: RunRecorder, model: str, limit: int = 5) -> list[dict[str, str]]:
    found = runs.search(tags.RELEASE_EXPERIMENT, f"tags.`{tags.RUN_MODEL}` = '{model}'", max_results=limit)
    return [
        {
            "run_id": run.run_id,
            "candidate": run.tags.get(tags.RUN_RELEASED, run.tags.get(tags.RUN_CANDIDATE, "")),
            "champion": run.tags.get(tags.RUN_CHAMPION, ""),
            "outcome": run.tags.get(tags.RUN_OUTCOME, "in progress"),
            "reason": run.tags.get(tags.RUN_REASON, ""),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.start_time_ms / 1000)),
        }
        for run in found
    ]
