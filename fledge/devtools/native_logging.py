"""Log a checkpoint into MLflow the ways teams do without Fledge, for tests and examples: a
transformers-flavor logged model, or a save_pretrained directory as run artifacts registered
with a `runs:/` source. Fledge adopts such versions on first use (`registry.store.ModelRegistry.adopt`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from urllib.parse import urlparse

import mlflow

EXPERIMENT = "team-fine-tunes"
# mlflow.transformers infers pip requirements by importing the whole stack (torchvision too,
# which Fledge's venv does not have); naming them skips the inference.
REQUIREMENTS = ["transformers", "torch", "safetensors"]


@contextlib.contextmanager
def _tracking(tracking_uri: str):
    # set_tracking_uri also exports MLFLOW_TRACKING_URI (which Fledge honours): put back exactly
    # what was there, unset included.
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(tracking_uri)
    try:
        mlflow.set_experiment(EXPERIMENT)
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def log_transformers_model(tracking_uri: str, checkpoint: Path, name: str, alias: str | None = None) -> str:
    """`mlflow.transformers.log_model(transformers_model={"model", "tokenizer"})`, registered as
    `name`; returns the new version."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = AutoModelForCausalLM.from_pretrained(checkpoint), AutoTokenizer.from_pretrained(checkpoint)
    with _tracking(tracking_uri), mlflow.start_run():
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer}, name="model", task="text-generation",
            registered_model_name=name, pip_requirements=REQUIREMENTS,
        )
        version = str(info.registered_model_version)
        if alias:
            mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    return version


def log_checkpoint_artifacts(tracking_uri: str, checkpoint: Path, name: str,
                             artifact_path: str = "checkpoints/final") -> str:
    """The directory logged as run artifacts and registered with a `runs:/RUN/PATH` source.
    MLflow 3's `mlflow.register_model` accepts `runs:/` only where an MLmodel or a logged model
    is; the client's `create_model_version` takes any source, as registries of plain files do."""
    with _tracking(tracking_uri), mlflow.start_run() as run:
        mlflow.log_artifacts(str(checkpoint), artifact_path)
        client = mlflow.MlflowClient()
        try:
            client.create_registered_model(name)
        except mlflow.exceptions.MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        source = f"runs:/{run.info.run_id}/{artifact_path}"
        return str(client.create_model_version(name, source, run.info.run_id).version)


def stored_directory(client: mlflow.MlflowClient, name: str, version: str, served_artifacts: Path | None = None) -> Path:
    """Where a version's files lie on this machine's disk (tests damage them behind MLflow's
    back). `served_artifacts`: a tracking server's --artifacts-destination, for mlflow-artifacts:/."""
    uri = urlparse(client.get_model_version_download_uri(name, version))
    if uri.scheme == "runs":  # runs:/RUN_ID/PATH
        run_id, _, path = uri.path.lstrip("/").partition("/")
        uri = urlparse(f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{path}")
    if uri.scheme == "mlflow-artifacts":
        if served_artifacts is None:
            raise ValueError("mlflow-artifacts:/ locations need the server's artifacts destination")
        return served_artifacts / uri.path.lstrip("/")
    return Path(uri.path)
