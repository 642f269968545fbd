"""Shared fixtures. Expensive things (the zoo, MLflow's database, vLLM servers) are built
once per session; each test gets its own model names so tests never see each other's state."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def session_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("fledge-home")
    return home


@pytest.fixture()
def fledge_home(tmp_path, monkeypatch) -> Path:
    """A fresh FLEDGE_HOME for CLI tests that must start from nothing."""
    home = tmp_path / "home"
    monkeypatch.setenv("FLEDGE_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return home


@pytest.fixture(scope="session")
def registry(session_home):
    """A real MLflow registry on SQLite, shared by the session (creating its schema takes seconds)."""
    from fledge.core.home import FledgeHome
    from fledge.services.context import open_registry

    return open_registry(FledgeHome(session_home))


@pytest.fixture()
def registry_state(registry):
    """Everything a refused registration must leave alone (models, versions with their aliases
    and tags, registry runs), as a value to compare before and after."""

    def snapshot() -> tuple:
        models = tuple(
            (name, tuple((v.version, v.aliases, tuple(sorted(v.tags.items()))) for v in registry.versions(name)))
            for name in registry.model_names()
        )
        experiment = registry.client.get_experiment_by_name("fledge-registry")
        runs = 0 if experiment is None else len(registry.client.search_runs([experiment.experiment_id]))
        return models, runs

    return snapshot


@pytest.fixture()
def model_name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small, valid, untrained Llama checkpoint with a real tokenizer: fast to build, enough
    for registry tests that do not need a model that knows anything."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from fledge.devtools.zoo.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tiny-checkpoint")
    train_tokenizer(["Q: What is 1 plus 2?\nA: 3", "Q: hello\nA: hi"] * 5, root)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(root)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=1, num_key_value_heads=1, head_dim=64, max_position_embeddings=64,
    )
    LlamaForCausalLM(config).save_pretrained(root, safe_serialization=True)
    return root


@pytest.fixture()
def checkpoint_copy(tiny_checkpoint, tmp_path) -> Path:
    """A private copy of the tiny checkpoint that a test may damage."""
    target = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint, target)
    return target


@pytest.fixture(scope="session")
def zoo():
    """The trained zoo: built once per machine (minutes), then taken from the cache (seconds)."""
    from fledge.devtools.zoo.build import build_zoo

    return build_zoo(log=lambda line: print(line, flush=True))


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect API (temporary SQLite database) for the session's flow runs."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture()
def home_env(session_home, monkeypatch):
    """Tasks find the Fledge home through FLEDGE_HOME, as in a deployment."""
    monkeypatch.setenv("FLEDGE_HOME", str(session_home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return session_home


# ---- the suite's cost, by tier: printed at the end of every run (CI logs show the budget) ---------

_TIER_SECONDS: dict[str, float] = {}


def pytest_runtest_logreport(report):
    parts = Path(report.fspath).parts
    tier = parts[parts.index("tests") + 1] if "tests" in parts and parts.index("tests") + 2 < len(parts) else "other"
    _TIER_SECONDS[tier] = _TIER_SECONDS.get(tier, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    if not _TIER_SECONDS:
        return
    terminalreporter.section("seconds by tier (setup + call + teardown)")
    for tier, seconds in sorted(_TIER_SECONDS.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{tier:12s} {seconds:8.1f} s  ({seconds / 60:.1f} min)")
    terminalreporter.write_line(f"{'total':12s} {sum(_TIER_SECONDS.values()):8.1f} s")
