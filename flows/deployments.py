"""The deployments: `release` (typed parameters, triggered from the UI), `release-watch`
(scheduled with the policy's cron), `rollback` and `promote`, plus the GPU-heavy steps
(`evaluate-suite`, `quantize-version`) that a release dispatches to the `gpu` pool.

Two ways to run them:
- `fledge deploy --serve`: one long-running process serves every deployment (Prefect's
  `serve`); runs triggered in the UI or by the schedule execute in it. Simplest locally.
- `fledge deploy`: registers the deployments on work pools `cpu` and `gpu` (created if
  missing, type `process`); `prefect worker start --pool cpu` (and `--pool gpu` on a GPU host)
  picks their runs up. At scale the pools are Docker or Kubernetes pools and the same code
  ships in an image.
"""

from __future__ import annotations

from pathlib import Path

from prefect import Flow

from fledge.core.policy import ReleasePolicy
from flows.dispatch import evaluate_suites_flow, quantize_flow
from flows.release import release
from flows.release_watch import release_watch
from flows.run_policy import deployment_parameters, deployment_tags
from flows.rollback import promote, rollback

ROOT = Path(__file__).resolve().parent.parent
CPU_POOL, GPU_POOL = "cpu", "gpu"


def deployment_specs(policy: ReleasePolicy) -> list[dict]:
    """Name, flow, entrypoint, pool and schedule of every deployment. The operator-facing ones
    carry the policy's content as a parameter (pinned by its hash in their tags: flows.run_policy);
    the GPU steps get the release's policy from the run that dispatches them."""
    parameters = deployment_parameters(policy)
    return [
        dict(flow=release, entrypoint="flows/release.py:release", name="release", pool=CPU_POOL, cron=None,
             parameters=parameters, description="Release a candidate version: gates, approval, canary, promotion."),
        dict(flow=release_watch, entrypoint="flows/release_watch.py:release_watch", name="release-watch", pool=CPU_POOL,
             cron=policy.schedule.release_watch_cron, parameters=parameters,
             description="Start a release for every challenger not released yet."),
        dict(flow=rollback, entrypoint="flows/rollback.py:rollback", name="rollback", pool=CPU_POOL, cron=None,
             parameters=parameters, description="Put the previous champion back."),
        dict(flow=promote, entrypoint="flows/rollback.py:promote", name="promote", pool=CPU_POOL, cron=None,
             parameters=parameters, description="Make an evaluated version the champion."),
        dict(flow=evaluate_suites_flow, entrypoint="flows/dispatch.py:evaluate_suites_flow", name=GPU_POOL, pool=GPU_POOL,
             cron=None, parameters={}, description="The release's evaluation suites on a GPU runner."),
        dict(flow=quantize_flow, entrypoint="flows/dispatch.py:quantize_flow", name=GPU_POOL, pool=GPU_POOL,
             cron=None, parameters={}, description="Quantize and gate a version on a GPU runner."),
    ]


def _tags(spec: dict, policy: ReleasePolicy, policy_name: str) -> list[str]:
    return ["fledge"] + (deployment_tags(policy, policy_name) if spec["parameters"] else [])


def served_deployments(policy: ReleasePolicy, policy_name: str = "default") -> list:
    """For `prefect.serve`: every deployment but the GPU ones (they need a GPU pool's worker)."""
    return [
        spec["flow"].to_deployment(name=spec["name"], cron=spec["cron"], parameters=spec["parameters"],
                                   description=spec["description"], tags=_tags(spec, policy, policy_name))
        for spec in deployment_specs(policy) if spec["pool"] == CPU_POOL
    ]


def serve_all(policy: ReleasePolicy, policy_name: str = "default") -> None:
    from prefect import serve

    serve(*served_deployments(policy, policy_name))


def ensure_work_pools() -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        for pool in (CPU_POOL, GPU_POOL):
            try:
                client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            except ObjectAlreadyExists:
                pass


def deploy_to_pools(policy: ReleasePolicy, policy_name: str = "default", source: Path = ROOT) -> list[str]:
    """Register every deployment on its work pool; returns their full names."""
    ensure_work_pools()
    names = []
    for spec in deployment_specs(policy):
        flow = Flow.from_source(source=str(source), entrypoint=spec["entrypoint"])
        flow.deploy(name=spec["name"], work_pool_name=spec["pool"], cron=spec["cron"], parameters=spec["parameters"],
                    description=spec["description"], tags=_tags(spec, policy, policy_name), build=False, push=False,
                    print_next_steps=False)
        names.append(f"{flow.name}/{spec['name']}")
    return names
