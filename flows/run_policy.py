"""The policy a flow run works under: the one its deployment was deployed with, never a path.

A deployment pins its policy when it is deployed: the content goes in its `policy` parameter
(so it travels with every run and sub-run to any worker) and the content hash in its tags. A
run started from the deployment may carry another policy (a custom run in the UI) or dotted
`overrides`; it gets them only where `fledge.core.overrides` finds them no weaker than the
deployed policy, or weaker only where the policy lists them in `overrides_allowed`. A run
started in-process (the CLI, the demo, a test) has no deployment: the policy its caller gives
is the deployed one.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, runtime
from prefect.client.orchestration import get_client

from fledge.core.overrides import PolicyRefused, Weakening, apply_overrides, check_run_policy
from fledge.core.policy import ReleasePolicy, load_policy

POLICY_HASH_TAG = "fledge-policy-hash:"
POLICY_NAME_TAG = "fledge-policy:"


def deployment_tags(policy: ReleasePolicy, policy_name: str) -> list[str]:
    """What a deployment says of its policy, readable in the UI's deployment list."""
    return [f"{POLICY_NAME_TAG}{policy_name}", f"{POLICY_HASH_TAG}{policy.content_hash}"]


def deployment_parameters(policy: ReleasePolicy) -> dict[str, Any]:
    return {"policy": policy.model_dump(mode="json")}


def _deployed_policy() -> ReleasePolicy | None:
    """The policy of the deployment this run belongs to, checked against the hash it was deployed with."""
    deployment_id = runtime.deployment.id
    if not deployment_id:
        return None
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    pinned = [t.removeprefix(POLICY_HASH_TAG) for t in deployment.tags or [] if t.startswith(POLICY_HASH_TAG)]
    stored = (deployment.parameters or {}).get("policy")
    if not pinned or stored is None:
        raise PolicyRefused(
            f"The deployment {deployment.name} was not deployed with a pinned policy (no `policy` parameter or no "
            f"{POLICY_HASH_TAG} tag), so nothing says which rules its runs follow. Redeploy it with `fledge deploy "
            "--policy FILE`.")
    policy = ReleasePolicy.model_validate(stored)
    if policy.content_hash != pinned[0]:
        raise PolicyRefused(
            f"The deployment {deployment.name}'s stored policy reads {policy.content_hash}, not the {pinned[0]} it was "
            "deployed with: its parameters were edited after deployment. A policy changes only by redeploying it "
            "(`fledge deploy --policy FILE`).")
    return policy


def run_policy(policy: ReleasePolicy | None, overrides: dict[str, Any] | None = None,
               auto_approve: bool = False) -> ReleasePolicy:
    """The policy this run may use, or PolicyRefused (one paragraph per rule) before any work."""
    deployed = _deployed_policy()
    base = deployed or policy or load_policy()
    proposed = apply_overrides(policy or base, overrides)
    allowed: list[Weakening] = check_run_policy(base, proposed, auto_approve)
    if allowed:
        get_run_logger().warning("This run weakens the deployed policy where it allows it: "
                                 + "; ".join(w.describe() for w in allowed))
    return proposed
