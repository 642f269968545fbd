"""Checks of a Hugging Face checkpoint directory before it is registered, adopted or served.

Nothing here unpickles or runs anything from the checkpoint. The cheap checks (file kinds,
links, configs, safetensors headers) run on every materialize; the deep ones (NaN/Inf in the
values, tensor shapes against config.json) read the weights and run once, when a version's files
enter Fledge (registration or adoption): after that, the sha256 manifest proves the files are
the ones checked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from registry.adapters import adapter_problems, is_adapter
from registry.config_shapes import shape_problems, vocabulary_problem
from registry.errors import CheckpointRefused
from registry.safetensors_file import MalformedSafetensors, TensorEntry, non_finite_tensors, read_header

WEIGHT_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".dill", ".npy", ".npz"}
# Everything a checkpoint may hold besides safetensors weights: configs, tokenizers, cards.
# Anything else (other tensor formats such as .gguf/.h5/.msgpack/.onnx, archives, binaries)
# is refused: an allow-list, because a deny-list is one new format away from serving a pickle.
OTHER_SUFFIXES = {".json", ".txt", ".md", ".model", ".jinja", ".yaml", ".yml", ".tiktoken", ".gitattributes"}
OTHER_NAMES = {"LICENSE", "NOTICE", "MLmodel", "README"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
CONFIG_FILES_WITH_CODE = ("config.json", "tokenizer_config.json", "processor_config.json",
                          "preprocessor_config.json", "generation_config.json", "adapter_config.json")


def walk_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """(regular files, symbolic links) under `directory`, never following a link."""
    files, links = [], []
    for root, dirs, names in os.walk(directory, followlinks=False):
        for name in [*dirs, *names]:
            path = Path(root) / name
            if path.is_symlink():
                links.append(path)
            elif path.is_file():
                files.append(path)
    return sorted(files), sorted(links)


def _has_key(value, key: str) -> bool:
    if isinstance(value, dict):
        return key in value or any(_has_key(v, key) for v in value.values())
    if isinstance(value, list):
        return any(_has_key(v, key) for v in value)
    return False


def _file_kind_problems(directory: Path, files: list[Path], links: list[Path]) -> list[str]:
    problems = []
    if links:
        named = ", ".join(p.relative_to(directory).as_posix() for p in links)
        problems.append(
            f"it holds symbolic links ({named}), which Fledge never follows (a link can point at any "
            "file on the machine); copy the real files into the directory instead, e.g. "
            "`cp -rL SNAPSHOT_DIR ./model` (a Hugging Face cache snapshot is made of links)"
        )
    relative = {p: p.relative_to(directory).as_posix() for p in files}
    pickles = [relative[p] for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        problems.append(
            f"it holds pickle weights ({', '.join(pickles)}), which can run code when loaded; "
            "convert them to safetensors (save_pretrained(safe_serialization=True))"
        )
    code = [relative[p] for p in files if p.suffix.lower() == ".py"]
    if code:
        problems.append(
            f"it ships Python code ({', '.join(code)}) that would need trust_remote_code; "
            "use an architecture that vLLM and transformers implement natively"
        )
    known = PICKLE_SUFFIXES | OTHER_SUFFIXES | {".py", WEIGHT_SUFFIX}
    unknown = [relative[p] for p in files if p.suffix.lower() not in known and p.name not in OTHER_NAMES]
    if unknown:
        problems.append(
            f"it holds files Fledge does not serve ({', '.join(unknown)}): weights must be *.safetensors, "
            "the rest configs, tokenizer files and cards (.json, .txt, .model, .md); remove them or "
            "convert the weights (save_pretrained(safe_serialization=True))"
        )
    return problems


def _config_problems(directory: Path, files: list[Path], supported_architectures: frozenset[str] | None) -> list[str]:
    problems = []
    for path in files:
        if path.suffix.lower() != ".json" or path.name not in CONFIG_FILES_WITH_CODE:
            continue
        try:
            content = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            problems.append(f"{path.relative_to(directory)} is not valid JSON ({error})")
            continue
        if _has_key(content, "auto_map"):
            problems.append(
                f"{path.relative_to(directory)} has an auto_map, so loading it would need "
                "trust_remote_code (custom code from the checkpoint); remove the auto_map and use "
                "a class transformers and vLLM implement"
            )
    config_path = directory / "config.json"
    if not config_path.is_file():
        problems.append("config.json is missing (it is not a Hugging Face checkpoint)")
        return problems
    try:
        config = json.loads(config_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return problems  # reported above
    architectures = config.get("architectures") or []
    if not architectures:
        problems.append("config.json names no architectures")
    if supported_architectures is not None:
        unknown = [a for a in architectures if a not in supported_architectures]
        if unknown:
            problems.append(
                f"architecture {', '.join(unknown)} is not one vLLM serves (see vLLM's supported models list)"
            )
    return problems


def _tokenizer_problems(directory: Path) -> list[str]:
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return ["no tokenizer (tokenizer.json or tokenizer.model) is in the directory; save the tokenizer with the model"]
    if not (directory / "tokenizer_config.json").is_file():
        return ["tokenizer_config.json is missing; save the tokenizer with tokenizer.save_pretrained()"]
    return []


def checkpoint_problems(
    directory: Path, supported_architectures: frozenset[str] | None, *, deep: bool = True,
    base_shapes: dict[str, tuple[int, ...]] | None = None,
) -> list[str]:
    """Every reason the directory will not be served, at once (empty: servable). A LoRA adapter
    is checked as one (`base_shapes`: its base model's parameter shapes, where known)."""
    if not directory.is_dir() or directory.is_symlink():
        return [f"{directory} is not a directory (pass a Hugging Face checkpoint directory)"]
    files, links = walk_files(directory)
    problems = _file_kind_problems(directory, files, links)
    if is_adapter(directory):
        return problems + adapter_problems(directory, files, base_shapes, deep=deep)
    weights = [p for p in files if p.suffix.lower() == WEIGHT_SUFFIX]
    if not weights and not any(p.suffix.lower() in PICKLE_SUFFIXES | {WEIGHT_SUFFIX} for p in [*files, *links]):
        problems.append("it holds no *.safetensors weight file")
    tensors: dict[str, tuple[str, TensorEntry]] = {}
    headers_ok = True
    for weight in weights:
        name = weight.relative_to(directory).as_posix()
        try:
            entries = read_header(weight)
        except MalformedSafetensors as error:
            problems.append(f"{error}; re-save or re-upload the weights (save_pretrained(safe_serialization=True))")
            headers_ok = False
            continue
        tensors.update({entry.name: (name, entry) for entry in entries})
        if deep:
            bad = non_finite_tensors(weight, entries)
            if bad:
                problems.append(
                    f"{name} has NaN or Inf values in {', '.join(bad[:3])}"
                    + (f" (and {len(bad) - 3} more tensors)" if len(bad) > 3 else "")
                    + "; the training run diverged or the weights were damaged: export a checkpoint "
                    "from before the divergence"
                )
    config_problems = _config_problems(directory, files, supported_architectures)
    problems += config_problems
    problems += _tokenizer_problems(directory)
    if deep and headers_ok and tensors and not config_problems and (directory / "config.json").is_file():
        problems += shape_problems(directory, tensors)
        vocabulary = vocabulary_problem(directory)
        if vocabulary:
            problems.append(vocabulary)
    return problems


def validate_checkpoint(
    directory: Path, supported_architectures: frozenset[str] | None = None, *, deep: bool = True,
    base_shapes: dict[str, tuple[int, ...]] | None = None,
) -> None:
    problems = checkpoint_problems(directory, supported_architectures, deep=deep, base_shapes=base_shapes)
    if problems:
        raise CheckpointRefused(directory, problems)
