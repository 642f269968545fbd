"""Mirrored pairs as MLflow traces with assessments: MLflow 3's own model for scoring production
traffic, so a shadow step's evidence can be browsed, searched and re-scored in the MLflow UI
(experiment `fledge-shadow`, each trace linked to the release's run).

One trace per pair: inputs are the prompt (or its sha256: the caller decides what it hands
over), outputs both answers with their HTTP status; the scorers' verdicts are assessments
(feedback from code: the refusal detector, the guard model, the probe's expected answer).
Retention: traces older than the policy's limit are deleted before new ones are logged.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

import mlflow
from mlflow import MlflowClient
from mlflow.entities import AssessmentSource

SHADOW_EXPERIMENT = "fledge-shadow"
# Traces are exported to the process's tracking URI (MlflowClient.start_trace included), and
# mlflow.log_feedback has no client form: both are pointed at ours for the length of one logging,
# under a lock, and the process's setting is then put back exactly as it was (set or not, and
# the MLFLOW_TRACKING_URI variable that set_tracking_uri writes): a setting left behind sent
# every later MLflow call of the process, whatever its own MLFLOW_TRACKING_URI, to this store.
_FLUENT = threading.Lock()


@contextlib.contextmanager
def _process_tracking_uri(uri: str):
    from mlflow.tracking._tracking_service import utils as tracking_utils  # the setting itself: None when unset

    saved_uri, saved_env = tracking_utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uri)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def _experiment_id(client: MlflowClient) -> str:
    experiment = client.get_experiment_by_name(SHADOW_EXPERIMENT)
    return experiment.experiment_id if experiment else client.create_experiment(SHADOW_EXPERIMENT)


def _assessments(pair: dict) -> list[tuple[str, object, str]]:
    """(name, value, scorer) per verdict the pair carries."""
    found = []
    for side in ("baseline", "candidate"):
        if pair[side].get("refused") is not None:
            found.append((f"{side}_refused", bool(pair[side]["refused"]), "refusal-detector"))
        if pair[side].get("correct") is not None:
            found.append((f"{side}_correct", bool(pair[side]["correct"]), "probe-expected-answer"))
    if pair.get("harmful") is not None:
        found.append(("prompt_harmful", bool(pair["harmful"]), f"{pair.get('label_source') or 'label'}"))
    return found


def log_pair_traces(tracking_uri: str, pairs: list[dict], tags: dict[str, str], retention_days: int) -> list[str]:
    """Log `pairs` (serving.canary.paired.ScoredPair as JSON) as traces tagged with `tags`;
    returns the trace ids."""
    client = MlflowClient(tracking_uri)
    experiment_id = _experiment_id(client)
    cutoff_ms = int((time.time() - retention_days * 86400) * 1000)
    client.delete_traces(experiment_id=experiment_id, max_timestamp_millis=cutoff_ms)
    trace_ids = []
    with _FLUENT, _process_tracking_uri(tracking_uri):
        for pair in pairs:
            inputs = {"prompt": pair.get("prompt_text") or f"sha256:{pair['prompt_sha256']}",
                      "probe": pair.get("probe"), "deterministic": pair.get("deterministic")}
            outputs = {side: {"version": pair[side]["version"], "status": pair[side]["status"],
                              "answer": pair[side].get("answer_text") or f"sha256:{pair[side].get('answer_sha256')}",
                              "latency_s": pair[side].get("latency_s")} for side in ("baseline", "candidate")}
            span = client.start_trace("mirrored pair", inputs=inputs, experiment_id=experiment_id,
                                      tags={**tags, "fledge.pair_seq": str(pair["seq"])})
            client.end_trace(span.trace_id, outputs=outputs)
            trace_ids.append(span.trace_id)
        # Ended traces are exported in the background; an assessment needs its trace stored.
        mlflow.flush_trace_async_logging()
        for trace_id, pair in zip(trace_ids, pairs):
            for name, value, scorer in _assessments(pair):
                mlflow.log_feedback(trace_id=trace_id, name=name, value=value,
                                    source=AssessmentSource(source_type="CODE", source_id=scorer))
    return trace_ids


def link_traces(tracking_uri: str, trace_ids: list[str], run_id: str) -> None:
    """Show the traces on the release's run page."""
    if trace_ids:
        MlflowClient(tracking_uri).link_traces_to_run(trace_ids, run_id)


def pair_traces(tracking_uri: str, tags: dict[str, str]) -> list:
    """The traces carrying every tag in `tags` (for `fledge status` and the tests)."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(SHADOW_EXPERIMENT)
    if experiment is None:
        return []
    query = " AND ".join(f"tag.`{key}` = '{value}'" for key, value in tags.items())
    return client.search_traces(locations=[experiment.experiment_id], filter_string=query or None, max_results=500)
