"""Where a flow run came from, as the Prefect API records it (not as its parameters claim)."""

from __future__ import annotations

from prefect import runtime
from prefect.client.orchestration import get_client


def started_by_schedule() -> str | None:
    """`schedule of DEPLOYMENT` when this run was started by a run its deployment's schedule
    created (release-watch starting a release), else None. A run someone triggered by hand,
    the release-watch's included, is not the schedule's: it needs a signed request."""
    run_id = runtime.flow_run.id
    if not run_id:
        return None
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        if run.parent_task_run_id is None:
            return None
        parent = client.read_flow_run(client.read_task_run(run.parent_task_run_id).flow_run_id)
        if not parent.auto_scheduled or parent.deployment_id is None:
            return None
        return f"schedule of {client.read_deployment(parent.deployment_id).name}"
