"""Versions registered the way teams register them, without Fledge: `mlflow.transformers.log_model`
(an MLflow 3 logged model, `models:/m-...` source) and a save_pretrained directory logged as run
artifacts and registered from `runs:/`. Against a real local MLflow store and a real MLflow tracking
server that serves the artifacts itself (`mlflow-artifacts:/`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

import httpx
import mlflow
import pytest
from typer.testing import CliRunner

from fledge.cli.main import app
from fledge.devtools.native_logging import log_checkpoint_artifacts as log_run_artifacts
from fledge.devtools.native_logging import log_transformers_model, stored_directory
from fledge.core.tags import TAG_ADOPTION_RUN, TAG_FLAVOR, TAG_LAYOUT, TAG_MANIFEST
from registry.errors import ChecksumMismatch, UnservableArtifact
from registry.store import ModelRegistry

LLAMA_ONLY = frozenset({"LlamaForCausalLM"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """`mlflow server` on loopback, storing artifacts itself: versions get mlflow-artifacts:/ URIs."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"],
        stdout=open(root / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
    yield url, root / "artifacts"
    os.killpg(process.pid, 15)
    process.wait(timeout=30)


@pytest.fixture(params=["local store", "tracking server"])
def store(request, registry):
    """(registry, where its artifacts live on disk) for each kind of MLflow deployment."""
    if request.param == "local store":
        return registry, None
    url, artifacts = request.getfixturevalue("tracking_server")
    return ModelRegistry(url), artifacts


@pytest.mark.parametrize("how, layout", [(log_transformers_model, "mlflow-transformers"),
                                         (log_run_artifacts, "hf-directory")], ids=["log_model", "runs-artifacts"])
def test_a_version_logged_without_fledge_is_adopted_served_as_a_directory_and_then_guarded(
    how, layout, store, tiny_checkpoint, tmp_path
):
    registry, artifact_root = store
    name = f"native-{uuid.uuid4().hex[:6]}"
    version = how(registry.tracking_uri, tiny_checkpoint, name)
    ref = f"{name}/{version}"
    assert TAG_MANIFEST not in registry.get_version(name, version).tags

    directory = registry.materialize(ref, tmp_path / "cache", LLAMA_ONLY)

    adopted = registry.get_version(name, version)
    assert adopted.tags[TAG_LAYOUT] == layout
    assert adopted.tags[TAG_FLAVOR] == ("transformers" if layout == "mlflow-transformers" else "none")
    manifest = json.loads(registry.runs.artifact_text(adopted.tags[TAG_ADOPTION_RUN], "adoption/fledge-manifest.json"))
    assert adopted.tags[TAG_MANIFEST] and manifest["layout"]["layout"] == layout
    for served in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (directory / served).is_file(), sorted(p.name for p in directory.iterdir())
    assert registry.adopt(ref, tmp_path / "cache", LLAMA_ONLY) == (adopted, False)

    # A file changed in the artifact store after adoption is named as it was logged.
    logged_as = "model/model.safetensors" if layout == "mlflow-transformers" else "model.safetensors"
    weights = stored_directory(registry.client, name, version, artifact_root) / logged_as
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(ChecksumMismatch) as error:
        registry.materialize(ref, tmp_path / "cache", LLAMA_ONLY)
    assert f"{logged_as} has a different sha256" in str(error.value)


def test_models_lists_a_version_not_adopted_yet_without_touching_it(home_env, registry, tiny_checkpoint):
    name = f"native-{uuid.uuid4().hex[:6]}"
    version = log_run_artifacts(registry.tracking_uri, tiny_checkpoint, name)
    result = CliRunner().invoke(app, ["models", name])
    assert result.exit_code == 0, result.output
    assert "not adopted yet" in result.output
    assert TAG_MANIFEST not in registry.get_version(name, version).tags

    adopted = CliRunner().invoke(app, ["adopt", f"{name}/{version}"])
    assert adopted.exit_code == 0, adopted.output
    assert "adopted: layout hf-directory" in " ".join(adopted.output.split())
    assert "not adopted yet" not in CliRunner().invoke(app, ["models", name]).output


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: list[str]) -> list[str]:
        return model_input


def test_a_model_without_weights_for_vllm_is_refused_naming_its_flavor(home_env, registry, tmp_path):
    name = f"pyfunc-{uuid.uuid4().hex[:6]}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(registry.tracking_uri)
    try:
        with mlflow.start_run():
            mlflow.pyfunc.log_model(name="model", python_model=Echo(), registered_model_name=name,
                                    pip_requirements=["mlflow"])
    finally:
        mlflow.set_tracking_uri(previous)
    result = CliRunner().invoke(app, ["adopt", f"{name}/1"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    message = " ".join(result.output.split())
    assert "flavor python_function" in message and "mlflow.transformers.log_model" in message
    assert TAG_MANIFEST not in registry.get_version(name, "1").tags
    with pytest.raises(UnservableArtifact):
        registry.materialize(f"{name}/1", tmp_path / "cache", LLAMA_ONLY)
