"""Where Fledge keeps its state: one home directory, overridable by environment variables.

`FLEDGE_HOME` (default `./.fledge`) holds the SQLite MLflow store, its artifacts, materialized
checkpoints, logs and runtime state. `MLFLOW_TRACKING_URI` / `MLFLOW_REGISTRY_URI`, where set,
win over the embedded SQLite store so the same commands work against a shared MLflow server.
The zoo cache lives outside the checkout (the user's cache directory) so fresh clones on the
same machine reuse the trained models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from fledge.core.state import StatePaths, write_atomic


@dataclass(frozen=True)
class FledgeHome:
    root: Path
    mlflow_db: Path = field(init=False)  # the embedded MLflow store (SQLite)
    artifacts: Path = field(init=False)  # its artifact store
    checkpoints: Path = field(init=False)  # materialized (downloaded and verified) versions, ready for vLLM
    evaluation_cache: Path = field(init=False)  # the champions' reusable suite results (services.result_cache)
    logs: Path = field(init=False)  # vLLM and process logs
    state: Path = field(init=False)  # runtime state; `files` names every file in it
    files: StatePaths = field(init=False)

    def __post_init__(self):
        for name, path in {"mlflow_db": "mlflow.db", "artifacts": "mlartifacts", "checkpoints": "checkpoints",
                           "evaluation_cache": "cache/evaluations", "logs": "logs", "state": "state"}.items():
            object.__setattr__(self, name, self.root / path)  # frozen: set once, here
        object.__setattr__(self, "files", StatePaths.under(self.state))

    @classmethod
    def from_env(cls) -> "FledgeHome":
        root = Path(os.environ.get("FLEDGE_HOME", ".fledge")).expanduser().resolve()
        return cls(root)

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.mlflow_db}"

    @property
    def registry_uri(self) -> str:
        return os.environ.get("MLFLOW_REGISTRY_URI") or self.tracking_uri

    @property
    def instance_id(self) -> str:
        """Random, made when the home is first used: a home deleted and made again at the same
        path is another home (cached results must not point into the old one's stores)."""
        import uuid

        path = self.root / ".home-id"
        if not path.is_file():
            write_atomic(path, uuid.uuid4().hex)
        return path.read_text().strip()

    def ensure(self) -> "FledgeHome":
        for path in (self.root, self.artifacts, self.checkpoints, self.logs, self.state):
            path.mkdir(parents=True, exist_ok=True)
        return self


def zoo_cache_dir() -> Path:
    """Trained zoo models, keyed by recipe hash; outside the checkout on purpose."""
    override = os.environ.get("FLEDGE_ZOO_CACHE")
    if override:
        return Path(override).expanduser().resolve()
    return Path(platformdirs.user_cache_dir("fledge")) / "zoo"
