"""How a version's artifact tree is laid out, and the Hugging Face directory vLLM serves from it.

Versions reach MLflow in several shapes: Fledge's own registrations (a checkpoint directory and
its manifest), `mlflow.transformers.log_model` (weights under `model/`, each component under
`components/NAME/`, an `MLmodel` naming the flavor), a plain `save_pretrained` directory logged
as run artifacts, and PEFT adapters. Each maps artifact paths to the paths of one servable
directory; anything else is refused with what was found and what would make it servable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import yaml

from registry.errors import UnservableArtifact

MLMODEL = "MLmodel"
FLEDGE_MANIFEST = "fledge-manifest.json"
ADAPTER_CONFIG = "adapter_config.json"


class Layout(StrEnum):
    FLEDGE = "fledge"  # registered by `fledge register`
    MLFLOW_TRANSFORMERS = "mlflow-transformers"  # mlflow.transformers.log_model
    HF_DIRECTORY = "hf-directory"  # a save_pretrained directory logged as run artifacts
    PEFT_ADAPTER = "peft-adapter"  # adapter_config.json + adapter weights


@dataclass(frozen=True)
class ArtifactLayout:
    layout: Layout
    flavor: str  # the MLflow flavor the artifact was logged with, "none" for plain files
    task: str | None = None
    # servable path -> artifact path; artifact files not named here are not served (MLmodel,
    # conda.yaml, the input example) but are still in the manifest.
    served: dict[str, str] = field(default_factory=dict)

    @property
    def is_adapter(self) -> bool:
        return self.layout is Layout.PEFT_ADAPTER


def _files(root: Path, under: str = "") -> list[str]:
    base = root / under if under else root
    return sorted(p.relative_to(root).as_posix() for p in base.rglob("*") if p.is_file() or p.is_symlink())


def _identity(root: Path, under: str = "") -> dict[str, str]:
    prefix = f"{under}/" if under else ""
    return {path.removeprefix(prefix): path for path in _files(root, under)}


def _mlmodel_flavors(root: Path) -> dict:
    try:
        content = yaml.safe_load((root / MLMODEL).read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise UnservableArtifact(f"its {MLMODEL} file cannot be read ({error})") from None
    flavors = content.get("flavors") if isinstance(content, dict) else None
    return flavors if isinstance(flavors, dict) else {}


def _transformers_layout(root: Path, conf: dict) -> ArtifactLayout:
    model_dir = conf.get("model_binary") or "model"
    task = conf.get("task")
    if conf.get("peft_adaptor") and (root / conf["peft_adaptor"]).is_dir():
        return ArtifactLayout(Layout.PEFT_ADAPTER, "transformers", task, _identity(root, conf["peft_adaptor"]))
    if not (root / model_dir).is_dir():
        raise UnservableArtifact(
            f"it is a transformers-flavor model logged without its weights ({model_dir}/ is missing: "
            f"it points at {conf.get('source_model_name', 'a Hugging Face Hub model')} instead); log it "
            "with save_pretrained=True (the default) so the weights are in the artifact"
        )
    served = _identity(root, model_dir)
    for component in conf.get("components") or []:
        for path, artifact in _identity(root, f"components/{component}").items():
            if path in served:
                raise UnservableArtifact(f"components/{component}/{path} and {served[path]} would both be served as {path}")
            served[path] = artifact
    return ArtifactLayout(Layout.MLFLOW_TRANSFORMERS, "transformers", task, served)


def detect_layout(root: Path) -> ArtifactLayout:
    """The layout of a downloaded artifact tree, or UnservableArtifact naming what was found."""
    if (root / MLMODEL).is_file():
        flavors = _mlmodel_flavors(root)
        if "transformers" in flavors:
            return _transformers_layout(root, flavors["transformers"] or {})
        found = ", ".join(sorted(flavors)) or "none"
        raise UnservableArtifact(
            f"it is an MLflow model of flavor {found}, which has no Hugging Face weights for vLLM to "
            "serve; log the model with mlflow.transformers.log_model(transformers_model={'model': m, "
            "'tokenizer': t}), or log a save_pretrained() directory (safetensors weights, config.json, "
            "tokenizer) as run artifacts and register runs:/RUN_ID/PATH"
        )
    if (root / FLEDGE_MANIFEST).is_file():
        return ArtifactLayout(Layout.FLEDGE, "none", None, _identity(root))
    if (root / ADAPTER_CONFIG).is_file():
        return ArtifactLayout(Layout.PEFT_ADAPTER, "none", None, _identity(root))
    if (root / "config.json").is_file():
        return ArtifactLayout(Layout.HF_DIRECTORY, "none", None, _identity(root))
    top = ", ".join(sorted(p.name for p in root.iterdir())[:8]) or "nothing"
    raise UnservableArtifact(
        f"its artifacts ({top}) are neither an MLflow transformers model nor a Hugging Face directory "
        "(config.json, *.safetensors, tokenizer files at the top); register the directory that holds "
        "config.json, e.g. runs:/RUN_ID/PATH/TO/CHECKPOINT"
    )


def assemble(root: Path, layout: ArtifactLayout, target: Path) -> Path:
    """Move the served files of a downloaded tree into `target`, a directory vLLM can load."""
    target.mkdir(parents=True)
    for served, artifact in layout.served.items():
        destination = target / served
        destination.parent.mkdir(parents=True, exist_ok=True)
        (root / artifact).rename(destination)
    return target
