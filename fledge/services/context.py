"""Wiring shared by the CLI, the tasks and the tests: one Fledge home and the registry it uses."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fledge.core.home import FledgeHome

if TYPE_CHECKING:  # imported where used: MLflow alone takes seconds, and `fledge --help` needs none of it
    from registry.store import ModelRegistry
    from serving.launcher import LocalLauncher


def quiet_libraries() -> None:
    """MLflow and vLLM talk a lot at INFO; operators need our lines, not theirs."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    # Prefect's temporary server starts with the first flow run; beside busy vLLM servers on
    # 2 cores that takes longer than its 20 s default. Read when Prefect is first imported.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline machines: no telemetry
    for name in ("mlflow", "alembic", "urllib3", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)


def open_registry(home: FledgeHome | None = None) -> "ModelRegistry":
    from registry.store import ModelRegistry

    quiet_libraries()
    home = (home or FledgeHome.from_env()).ensure()
    return ModelRegistry(home.tracking_uri, home.registry_uri, artifact_root=home.artifacts)


def local_launcher(home: FledgeHome | None = None) -> "LocalLauncher":
    from serving.launcher import LocalLauncher

    home = (home or FledgeHome.from_env()).ensure()
    return LocalLauncher(home.logs)


@dataclass(frozen=True)
class Workspace:
    """What every application service works in: a Fledge home and its registry."""

    home: FledgeHome
    registry: ModelRegistry

    @classmethod
    def open(cls, home: FledgeHome | None = None) -> "Workspace":
        home = (home or FledgeHome.from_env()).ensure()
        return cls(home, open_registry(home))
