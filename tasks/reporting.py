"""What a release leaves behind to read: Prefect artifacts on the flow run, and the same
documents in the release's MLflow run, each linked to the other."""

from __future__ import annotations

import base64
import json
import os

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from evals.verdict import ReleaseVerdict
from fledge.core import tags
from fledge.core.policy import NotificationPolicy
from fledge.services.notify import Notice, post, should_post
from fledge.services.plane import connect_plane
from serving.canary.state_machine import RolloutState
from serving.canary.timeline import timeline_markdown, timeline_png, timeline_rows
from tasks.common import TRANSIENT, say, workspace


def _artifact_key(kind: str, model: str) -> str:
    # Prefect artifact keys: lowercase letters, digits and dashes.
    return "".join(c if c.isalnum() else "-" for c in f"{kind}-{model}".lower())


def mlflow_run_url(run_id: str) -> str:
    """Where the MLflow UI shows the run (FLEDGE_MLFLOW_UI_URL, default a local `mlflow ui`)."""
    base = os.environ.get("FLEDGE_MLFLOW_UI_URL", "http://127.0.0.1:5000").rstrip("/")
    run = workspace().registry.runs.get(run_id)
    return f"{base}/#/experiments/{run.experiment_id}/runs/{run_id}"


@task(name="link MLflow run", cache_policy=NO_CACHE, **TRANSIENT)
def link_mlflow_run(model: str, run_id: str) -> None:
    create_link_artifact(key=_artifact_key("mlflow-release", model), link=mlflow_run_url(run_id),
                         link_text=f"MLflow run {run_id}", description="The release's MLflow run: every parameter, metric and artifact")


@task(name="publish verdict", cache_policy=NO_CACHE, **TRANSIENT)
def publish_verdict(model: str, run_id: str, verdict: ReleaseVerdict, eval_runs: dict[str, str]) -> None:
    """The verdict report and the champion-vs-candidate metrics table, in Prefect and MLflow."""
    runs = workspace().registry.runs
    markdown = verdict.to_markdown()
    create_markdown_artifact(key=_artifact_key("verdict", model), markdown=markdown,
                             description=f"Release verdict for {verdict.candidate_ref}")
    rows, metrics = [], {}
    for suite, eval_run in eval_runs.items():
        data = runs.get(eval_run).metrics
        names = sorted({k.split(".", 1)[1] for k in data if k.startswith(("champion.", "candidate."))})
        for name in names:
            champion, candidate = data.get(f"champion.{name}"), data.get(f"candidate.{name}")
            rows.append({"suite": suite, "metric": name,
                         "champion": "-" if champion is None else f"{champion:.4g}",
                         "candidate": "-" if candidate is None else f"{candidate:.4g}"})
            metrics.update({f"{role}.{name}": value for role, value in (("champion", champion), ("candidate", candidate))
                            if value is not None})
    create_table_artifact(key=_artifact_key("metrics", model), table=rows,
                          description=f"{verdict.champion_ref} (champion) vs {verdict.candidate_ref} (candidate)")
    runs.log_metrics(run_id, metrics)
    runs.log_text(run_id, "verdict.md", markdown)
    runs.log_text(run_id, "verdict.json", verdict.to_json())
    runs.set_tags(run_id, {tags.RUN_VERDICT: verdict.outcome.value,
                           **{tags.run_eval_tag(suite): eval_run for suite, eval_run in eval_runs.items()}})


@task(name="publish canary timeline", cache_policy=NO_CACHE, **TRANSIENT)
def publish_canary(model: str, run_id: str, state: RolloutState) -> None:
    runs = workspace().registry.runs
    png = timeline_png(state)
    markdown = timeline_markdown(state)
    image = f"![canary timeline](data:image/png;base64,{base64.b64encode(png).decode()})"
    create_markdown_artifact(key=_artifact_key("canary", model), markdown=markdown + "\n\n" + image,
                             description=f"Canary timeline of {state.canary}")
    create_table_artifact(key=_artifact_key("canary-steps", model), table=timeline_rows(state),
                          description=f"Canary steps of {state.canary}")
    runs.log_text(run_id, "canary_timeline.md", markdown)
    runs.log_text(run_id, "canary_timeline.json", state.model_dump_json(indent=2))
    runs.log_text(run_id, "canary_timeline.png", png)
    runs.log_series(run_id, "canary.weight", [entry.canary_weight for entry in state.history])
    runs.set_tags(run_id, {tags.RUN_CANARY: state.phase.value})


@task(name="publish summary", cache_policy=NO_CACHE, **TRANSIENT)
def publish_summary(model: str, run_id: str, summary_markdown: str, details: dict) -> None:
    runs = workspace().registry.runs
    create_markdown_artifact(key=_artifact_key("release", model), markdown=summary_markdown,
                             description=f"Release of {details.get('candidate')}: {details.get('outcome')}")
    runs.log_text(run_id, "release.md", summary_markdown)
    runs.log_json(run_id, "release.json", details)


@task(name="publish gateway audit", cache_policy=NO_CACHE)
def publish_gateway_audit(model: str, run_id: str, after_seq: int) -> int | None:
    """The gateway's admin changes of the model made since the release began (its own and
    anyone else's; other models' changes are theirs), as `gateway_audit.jsonl` in the release's
    MLflow run. Returns how many; None when the
    gateway cannot be reached (a release that failed because of it still ends with its own
    error, not this one: the audit log stays in the gateway's state directory)."""
    try:
        entries = connect_plane(workspace().home, model).admin.audit(after=after_seq)
    except Exception as error:
        say()(f"The gateway's audit log could not be read for the MLflow run ({type(error).__name__}: {error}); "
              f"it stays in {workspace().home.files.audit}")
        return None
    workspace().registry.runs.log_text(run_id, "gateway_audit.jsonl",
                                       "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in entries))
    return len(entries)


def rename_flow_run(name: str) -> None:
    """The running flow run's name, as the UI lists it (not a task: renaming is not a step)."""
    from prefect import runtime
    from prefect.client.orchestration import get_client

    if runtime.flow_run.id:
        with get_client(sync_client=True) as client:
            client.update_flow_run(runtime.flow_run.id, name=name)


@task(name="notify", cache_policy=NO_CACHE)
def notify(policy: NotificationPolicy, model: str, outcome: str, title: str, body: str, manual: bool = False) -> list[str]:
    """Post the outcome to the policy's URLs; a receiver's problem is logged, never raised."""
    if not should_post(policy, outcome, manual):
        return []
    problems = post(policy, Notice(model=model, outcome=outcome, title=title, body=body))
    for problem in problems:
        get_run_logger().warning(f"Notification not delivered: {problem}")
    if not problems:
        say()(f"Notified {len(policy.urls)} receiver(s): {title}")
    return problems
