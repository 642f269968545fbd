"""LoRA adapters (PEFT): the checks of an adapter directory, against the base model it names,
and the rule that decides which champion an adapter can be released against.

An adapter is `adapter_config.json` + `adapter_model.safetensors`, trained on one base model;
its version carries that base as the tag `fledge.base` (NAME/VERSION). vLLM serves LoRA only
(not DoRA or other PEFT methods) and loads no code: the same refusals as for checkpoints apply.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from registry.safetensors_file import MalformedSafetensors, non_finite_tensors, read_header

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# base_model.model.<module>.lora_A.weight (PEFT's names; an adapter name may sit before .weight)
_LORA_TENSOR = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


def is_adapter(directory: Path) -> bool:
    return (directory / ADAPTER_CONFIG).is_file()


def adapter_config(directory: Path) -> dict:
    return json.loads((directory / ADAPTER_CONFIG).read_text())


def adapter_rank(directory: Path) -> int:
    """The largest LoRA rank in the adapter (`r`, or a module's own in `rank_pattern`)."""
    config = adapter_config(directory)
    return max([int(config.get("r") or 0), *[int(r) for r in (config.get("rank_pattern") or {}).values()]])


def _config_problems(config: dict) -> list[str]:
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"{ADAPTER_CONFIG} says peft_type {config.get('peft_type')!r}; vLLM serves LoRA adapters only "
                        "(train with peft.LoraConfig)")
    if not isinstance(config.get("r"), int) or config["r"] < 1:
        problems.append(f"{ADAPTER_CONFIG} has no LoRA rank r")
    if config.get("use_dora"):
        problems.append(f"{ADAPTER_CONFIG} enables DoRA, which vLLM does not serve; train with use_dora=False")
    # PEFT records the base's class in auto_mapping; a class outside transformers is custom code.
    library = (config.get("auto_mapping") or {}).get("parent_library", "transformers.")
    if "auto_map" in config or not str(library).startswith("transformers."):
        problems.append(f"{ADAPTER_CONFIG} names custom classes (auto_map, or auto_mapping from {library}), "
                        "which would need code from outside transformers; use a model class transformers implements")
    return problems


def adapter_problems(directory: Path, files: list[Path], base_shapes: dict[str, tuple[int, ...]] | None,
                     *, deep: bool) -> list[str]:
    """Why an adapter directory will not be served on its base (`base_shapes`: the base model's
    parameter shapes by name; None skips the comparison)."""
    try:
        config = adapter_config(directory)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return [f"{ADAPTER_CONFIG} is not valid JSON ({error})"]
    problems = _config_problems(config)
    weights = directory / ADAPTER_WEIGHTS
    if weights not in files:
        return [*problems, f"{ADAPTER_WEIGHTS} is missing (save the adapter with save_pretrained(), safetensors)"]
    try:
        entries = read_header(weights)
    except MalformedSafetensors as error:
        return [*problems, f"{error}; re-save the adapter (save_pretrained())"]
    if deep:
        bad = non_finite_tensors(weights, entries)
        if bad:
            problems.append(f"{ADAPTER_WEIGHTS} has NaN or Inf values in {', '.join(bad[:3])}; the adapter's "
                            "training diverged: export it from before the divergence")
    lora = [(m, e) for e in entries if (m := _LORA_TENSOR.match(e.name))]
    if not lora:
        problems.append(f"{ADAPTER_WEIGHTS} holds no lora_A/lora_B tensors")
    if base_shapes is not None:
        mismatched = []
        for match, entry in lora:
            base = base_shapes.get(f"{match['module']}.weight")
            if base is None or len(base) != 2 or len(entry.shape) != 2:
                mismatched.append(f"{match['module']} is not a linear layer of the base")
                continue
            out_features, in_features = base
            fits = entry.shape[1] == in_features if match["part"] == "A" else entry.shape[0] == out_features
            if not fits:
                mismatched.append(f"{entry.name} is {list(entry.shape)}, the base's {match['module']} is {list(base)}")
        if mismatched:
            problems.append(
                "the adapter does not fit its base model: " + "; ".join(sorted(set(mismatched))[:3])
                + "; register it with --base naming the version it was trained on"
            )
    return problems


def adapter_base_problem(candidate: str, candidate_base: str | None, champion: str, champion_base: str | None) -> str | None:
    """An adapter is released only against a champion on the same base model: the champion
    itself when it is a full model, the champion's base when it is an adapter too."""
    if candidate_base is None:
        return None
    serving_base = champion_base or champion
    if candidate_base != serving_base:
        return (f"{candidate} is a LoRA adapter trained on {candidate_base}, but the champion {champion} "
                f"{'is an adapter on' if champion_base else 'is'} {serving_base}: an adapter is served on its "
                "own base model only. Release it where its base is the champion, or retrain it on "
                f"{serving_base}.")
    return None
