"""A rollout started by hand (`fledge canary NAME/VERSION`): the release's rollout without its
offline gates. The version is served by the plane's fleet (its server belongs to its record
and outlives the command), and the canary, the promotion (the registry aliases move) and the
watch are the plane's controller's, as for a release: whoever started it may go away, the
rollout still ends by its analysis and registry and traffic agree."""

from __future__ import annotations

import uuid

from fledge.core.errors import FledgeError
from fledge.core.policy import ReleasePolicy
from fledge.services.controller import ManagedRollout, RolloutSpec
from fledge.services.plane import ServingPlane, serve_version
from registry.roles import ROLES
from registry.store import ModelRegistry, VersionInfo


class NothingToRollOut(FledgeError):
    """The version cannot be rolled out here (no stable version, or it is the stable one)."""


def submit_manual_rollout(registry: ModelRegistry, plane: ServingPlane, policy: ReleasePolicy, version: VersionInfo,
                          by: str) -> ManagedRollout:
    """Serve `version` (and the stable version's baseline instance where the policy asks for
    one) and hand its rollout against the gateway's stable version to the plane's controller."""
    model = version.name
    table = plane.routes()
    stable = table.stable() if table else None
    if stable is None:
        raise NothingToRollOut(f"The gateway has no stable version of {model}; start it with `fledge gateway {model}`.")
    if stable.version == version.ref:
        raise NothingToRollOut(f"{version.ref} is already the stable version of {model}.")
    candidate, _ = serve_version(registry, plane.home, policy.serving, version.ref, plane.fleet)
    baseline_url = None
    if policy.canary.baseline_instance and not version.adapter_base:
        baseline, _ = serve_version(registry, plane.home, policy.serving, stable.version, plane.fleet, baseline=True)
        baseline_url = baseline.base_url
    aliases = {role: v for role, v in registry.aliases(model).items() if role in ROLES}
    judged = policy.for_adapter() if version.adapter_base else policy  # an adapter's latency limit is LoRA's own
    spec = RolloutSpec(release_id=f"manual-{uuid.uuid4().hex[:12]}", model=model, stable=stable.version,
                       canary=version.ref, canary_url=candidate.base_url, baseline_url=baseline_url,
                       canary_policy=judged.canary, watch_policy=judged.watch, aliases_before=aliases,
                       routes_before=table.model_dump(mode="json"), submitted_by=by)
    view = plane.admin.submit_rollout(spec.model_dump(mode="json"))
    return ManagedRollout.model_validate({k: v for k, v in view.items() if k not in ("description", "progress")})
