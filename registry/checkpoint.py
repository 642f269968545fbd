"""Static checks of a Hugging Face checkpoint directory before it is registered or served.

Nothing here loads weights: the checks read file names, config.json and safetensors headers,
so they are cheap for large models too.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from registry.errors import CheckpointRefused

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")


def safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file is unusable, or None.

    Reads the 8-byte header length and the JSON header (the format's own definition) and checks
    that the tensor data the header declares is all there; a truncated upload fails here.
    Hand-written because the safetensors library only notices truncation when a tensor is read.
    """
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return f"{path.name} is not a safetensors file (only {size} bytes)"
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > size - 8:
            return f"{path.name} has a header of {header_length} bytes but the file holds {size}"
        try:
            header = json.loads(handle.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return f"{path.name} has an unreadable safetensors header"
    data_length = size - 8 - header_length
    declared = max(
        (entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"),
        default=0,
    )
    if declared != data_length:
        return (
            f"{path.name} is damaged: its header declares {declared} bytes of tensor data, "
            f"the file holds {data_length} (truncated or padded upload)"
        )
    return None


def checkpoint_problems(directory: Path, supported_architectures: frozenset[str] | None) -> list[str]:
    if not directory.is_dir():
        return [f"{directory} is not a directory (pass a Hugging Face checkpoint directory)"]
    problems: list[str] = []
    files = [p for p in directory.rglob("*") if p.is_file()]
    pickles = sorted(p.name for p in files if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        problems.append(
            f"it holds pickle weights ({', '.join(pickles)}), which can run code when loaded; "
            "convert them to safetensors (save_pretrained(safe_serialization=True))"
        )
    weights = sorted(p for p in files if p.suffix == ".safetensors")
    if not weights and not pickles:
        problems.append("it holds no *.safetensors weight file")
    for weight in weights:
        problem = safetensors_problem(weight)
        if problem:
            problems.append(problem)
    code = sorted(p.name for p in files if p.suffix == ".py")
    if code:
        problems.append(
            f"it ships Python code ({', '.join(code)}) that would need trust_remote_code; "
            "use an architecture that vLLM and transformers implement natively"
        )

    config_path = directory / "config.json"
    if not config_path.is_file():
        problems.append("config.json is missing (it is not a Hugging Face checkpoint)")
    else:
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            problems.append(f"config.json is not valid JSON ({error})")
            config = {}
        if "auto_map" in config:
            problems.append("config.json has an auto_map, so loading it would need trust_remote_code")
        architectures = config.get("architectures") or []
        if config and not architectures:
            problems.append("config.json names no architectures")
        if supported_architectures is not None:
            unknown = [a for a in architectures if a not in supported_architectures]
            if unknown:
                problems.append(
                    f"architecture {', '.join(unknown)} is not one vLLM serves "
                    "(see vLLM's supported models list)"
                )

    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        problems.append("no tokenizer (tokenizer.json or tokenizer.model) is in the directory; save the tokenizer with the model")
    elif not (directory / "tokenizer_config.json").is_file():
        problems.append("tokenizer_config.json is missing; save the tokenizer with tokenizer.save_pretrained()")
    return problems


def validate_checkpoint(directory: Path, supported_architectures: frozenset[str] | None = None) -> None:
    problems = checkpoint_problems(directory, supported_architectures)
    if problems:
        raise CheckpointRefused(directory, problems)
