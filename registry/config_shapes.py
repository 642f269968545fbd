"""Do the tensors on disk have the shapes config.json says, and does the tokenizer fit the
vocabulary? Checked for any architecture transformers implements by building the model from
the config on the meta device (no memory, no weights read) and comparing parameter shapes with
the safetensors headers. A mismatch found here is a minute of failed vLLM start-up saved.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from registry.safetensors_file import TensorEntry

_SHOWN = 3


def expected_shapes(directory: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, set[str]], str]:
    """Parameter and buffer shapes of the model config.json describes; the names that share one
    tensor (tied embeddings); the architecture's prefix for its base model."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(directory, trust_remote_code=False)
    architecture = (getattr(config, "architectures", None) or [None])[0]
    model_class = getattr(transformers, architecture, None) if architecture else None
    # transformers logs every missing-weight initialisation at meta-device build time.
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with torch.device("meta"):
        model = model_class(config) if model_class else transformers.AutoModelForCausalLM.from_config(config)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    shared: dict[int, set[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        shared.setdefault(id(parameter), set()).add(name)
    aliases = {name: names for names in shared.values() for name in names}
    return shapes, aliases, getattr(model, "base_model_prefix", "")


def shape_problems(directory: Path, tensors: dict[str, tuple[str, TensorEntry]]) -> list[str]:
    """Disagreements between config.json and the tensors (`tensors`: name -> (file, entry))."""
    config = json.loads((directory / "config.json").read_text())
    if config.get("quantization_config"):
        # A quantizer lays weights out its own way (packed ints, scales): vLLM's loader checks them.
        return []
    try:
        expected, aliases, prefix = expected_shapes(directory)
    except Exception as error:  # noqa: BLE001 - transformers raises many kinds for a bad config
        return [f"config.json does not describe a model transformers can build ({type(error).__name__}: {error})"]

    def model_name(name: str) -> str | None:
        for candidate in (name, f"{prefix}.{name}", name.removeprefix(f"{prefix}.")):
            if candidate in expected:
                return candidate
        return None

    mismatched, matched = [], set()
    for name, (file, entry) in sorted(tensors.items()):
        key = model_name(name)
        if key is None:
            continue
        matched |= aliases.get(key, {key})
        if entry.shape != expected[key]:
            mismatched.append(f"{name} in {file} is {list(entry.shape)}, config.json makes it {list(expected[key])}")
    missing = sorted(k for k in expected if k not in matched and k in aliases)
    problems = []
    if mismatched:
        more = f" (and {len(mismatched) - _SHOWN} more)" if len(mismatched) > _SHOWN else ""
        problems.append(
            "tensor shapes disagree with config.json: " + "; ".join(mismatched[:_SHOWN]) + more
            + f" (config.json: hidden_size={config.get('hidden_size')}, intermediate_size="
            f"{config.get('intermediate_size')}, vocab_size={config.get('vocab_size')}); save the "
            "config with the weights it belongs to (model.save_pretrained writes both)"
        )
    if not matched:
        problems.append(f"none of the tensors has a name {config.get('architectures')} uses; is this the right config.json?")
    elif missing:
        more = f" (and {len(missing) - _SHOWN} more)" if len(missing) > _SHOWN else ""
        problems.append(f"weights are missing for {', '.join(missing[:_SHOWN])}{more}")
    return problems


def vocabulary_problem(directory: Path) -> str | None:
    """The tokenizer may have fewer tokens than the embedding rows (padding), never more."""
    config = json.loads((directory / "config.json").read_text())
    vocab_size = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    if not vocab_size or not (directory / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    try:
        tokens = Tokenizer.from_file(str(directory / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    except Exception as error:  # noqa: BLE001 - the tokenizers library raises a bare Exception
        return f"tokenizer.json cannot be read ({error})"
    if tokens > vocab_size:
        return (
            f"the tokenizer has {tokens} tokens but config.json's vocab_size is {vocab_size}: ids past "
            f"{vocab_size - 1} have no embedding; resize the embeddings (model.resize_token_embeddings) "
            "and save model and tokenizer together"
        )
    return None
