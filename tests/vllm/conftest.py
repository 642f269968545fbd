"""One real vLLM server on CPU for the whole session (a cold start takes about a minute)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fledge.core.home import FledgeHome
from serving.config import ServerConfig
from serving.launcher import LocalLauncher, ServerHandle


@dataclass
class Served:
    handle: ServerHandle
    ref: str


@pytest.fixture(scope="session")
def launcher(session_home) -> LocalLauncher:
    return LocalLauncher(FledgeHome(session_home).ensure().logs)


@pytest.fixture(scope="session")
def served_base(zoo, registry, launcher, session_home):
    """The zoo's `base`, registered in MLflow, materialized with verified checksums, served."""
    from serving.engine import supported_architectures

    version, _ = registry.register_once(zoo["base"].path, "zoo-base", alias="champion")
    model_dir = registry.materialize(
        "zoo-base@champion", FledgeHome(session_home).checkpoints, supported_architectures()
    )
    handle = launcher.start(ServerConfig(model_dir=model_dir, served_model_name=version.ref))
    yield Served(handle, version.ref)
    handle.stop()
