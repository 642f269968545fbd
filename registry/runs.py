"""MLflow runs as Fledge writes them: evaluations, quantization gates, releases.

The one place outside `ModelRegistry` that talks to MLflow's tracking API. Every call names
its run id explicitly (no global active run), so runs written from threads of one process
never log into each other.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

# MLflow caps one log_batch at 1000 metrics / 100 params / 100 tags.
_BATCH = 100


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    experiment_id: str
    start_time_ms: int
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


class RunRecorder:
    def __init__(self, client: MlflowClient, tracking_uri: str, artifact_root: Path | None = None):
        self.client = client
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = self.artifact_root.as_uri() if self.artifact_root else None
        return self.client.create_experiment(name, artifact_location=location)

    def start(self, experiment: str, run_name: str, tags: dict[str, str] | None = None) -> str:
        return self.client.create_run(self._experiment_id(experiment), run_name=run_name,
                                      tags={k: str(v) for k, v in (tags or {}).items()}).info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        items = [Param(key, str(value)) for key, value in params.items()]
        for at in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, params=items[at:at + _BATCH])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        for at in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, metrics=items[at:at + _BATCH])

    def log_series(self, run_id: str, key: str, values: list[float]) -> None:
        """One metric over steps 0..n-1 (e.g. the canary weight through a rollout)."""
        for step, value in enumerate(values):
            self.client.log_metric(run_id, key, float(value), step=step)

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        items = [RunTag(key, str(value)) for key, value in tags.items()]
        for at in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, tags=items[at:at + _BATCH])

    def log_text(self, run_id: str, name: str, content: str | bytes, folder: str | None = None) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
            self.client.log_artifact(run_id, str(path), folder)

    def log_json(self, run_id: str, name: str, payload: Any, folder: str | None = None) -> None:
        self.log_text(run_id, name, json.dumps(payload, indent=1, default=str), folder)

    def log_file(self, run_id: str, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), folder)

    def finish(self, run_id: str, failed: bool = False) -> None:
        self.client.set_terminated(run_id, "FAILED" if failed else "FINISHED")

    def get(self, run_id: str) -> RunSummary:
        run = self.client.get_run(run_id)
        return RunSummary(run.info.run_id, run.info.experiment_id, run.info.start_time, dict(run.data.tags),
                          dict(run.data.params), dict(run.data.metrics))

    def search(self, experiment: str, filter_string: str = "", max_results: int = 10) -> list[RunSummary]:
        """Newest first; an experiment nothing was written to yet has no runs."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        runs = self.client.search_runs([found.experiment_id], filter_string=filter_string,
                                       order_by=["attributes.start_time DESC"], max_results=max_results)
        return [RunSummary(r.info.run_id, r.info.experiment_id, r.info.start_time, dict(r.data.tags),
                           dict(r.data.params), dict(r.data.metrics)) for r in runs]

    def artifact_text(self, run_id: str, path: str) -> str:
        """A text artifact's content (tests and reports read back what a run holds)."""
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp,
                                                        tracking_uri=self.tracking_uri)
            return Path(local).read_text()
