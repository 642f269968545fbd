"""Where Fledge keeps its state: one home directory, overridable by environment variables.

`FLEDGE_HOME` (default `./.fledge`) holds the SQLite MLflow store, its artifacts, materialized
checkpoints, logs and runtime state. `MLFLOW_TRACKING_URI` / `MLFLOW_REGISTRY_URI`, where set,
win over the embedded SQLite store so the same commands work against a shared MLflow server.
The zoo cache lives outside the checkout (the user's cache directory) so fresh clones on the
same machine reuse the trained models.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from fledge.core.state import StatePaths, write_atomic


@dataclass(frozen=True)
class FledgeHome:
    root: Path

    @classmethod
    def from_env(cls) -> "FledgeHome":
        root = Path(os.environ.get("FLEDGE_HOME", ".fledge")).expanduser().resolve()
        return cls(root)

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def checkpoints(self) -> Path:
        """Materialized (downloaded and verified) model versions, ready for vLLM."""
        return self.root / "checkpoints"

    @property
    def evaluation_cache(self) -> Path:
        """The champion's reusable suite results (fledge.services.result_cache)."""
        return self.root / "cache" / "evaluations"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def files(self) -> StatePaths:
        """Every runtime state file of this home, by what it holds."""
        return StatePaths(self.state)

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
