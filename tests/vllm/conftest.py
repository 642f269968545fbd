"""One real vLLM server on CPU for the whole session (a cold start takes about a minute)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fledge.core.home import FledgeHome
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
    # The settings every release serves with (the default policy's: LoRA enabled among them),
    # so the verdict tests compare the champion and each candidate on equal servers: a LoRA-
    # enabled candidate against a champion without LoRA read 1.19x slower.
    from fledge.core.policy import load_policy
    from fledge.services.evaluate import server_config

    handle = launcher.start(server_config(load_policy().serving, model_dir, version.ref, None))
    yield Served(handle, version.ref)
    handle.stop()
