"""Variants derived from a trained model instead of trained themselves."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch


def add_passthrough_layers(source_dir: Path, out_dir: Path, extra_layers: int, seed: int) -> dict:
    """Append decoder layers whose output projections are zero.

    Each added layer computes full attention and MLP (random weights), but adds exactly zero
    to the residual stream, so the model's outputs are those of the source while every token
    costs the extra layers' compute. That is the `slow` variant: same behaviour, more compute,
    without minutes of training a bigger model to the same skill.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    source = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32)
    config = source.config
    n_source = config.num_hidden_layers
    config.num_hidden_layers = n_source + extra_layers
    deeper = type(source)(config)
    missing, unexpected = deeper.load_state_dict(source.state_dict(), strict=False)
    assert not unexpected, unexpected
    with torch.no_grad():
        for layer in deeper.model.layers[n_source:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    deeper.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    deeper.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(source_dir).save_pretrained(out_dir)
    return {
        "parameters": sum(p.numel() for p in deeper.parameters()),
        "layers": config.num_hidden_layers,
        "passthrough_layers": extra_layers,
    }


def shorten_context(source_dir: Path, out_dir: Path, context_window: int) -> dict:
    """Copy a model and lower the context window in its config (vLLM serves no more than it)."""
    import json

    shutil.copytree(source_dir, out_dir)
    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    before = config["max_position_embeddings"]
    config["max_position_embeddings"] = context_window
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return {"context_window": context_window, "source_context_window": before}


def truncate_weights(source_dir: Path, out_dir: Path) -> dict:
    """Copy a model and cut its weight file in half: what an interrupted upload looks like."""
    shutil.copytree(source_dir, out_dir)
    weights = out_dir / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return {"damage": "model.safetensors truncated to half its size"}
