"""Checkpoints Fledge must refuse at registration, as a user meets them: `fledge register` on a
real MLflow store prints one paragraph naming the file and the fix, no traceback, exit 1, and
the registry (models, versions, aliases, runs) is exactly as before."""

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from fledge.cli.main import app

runner = CliRunner()


def edit_json(path, **changes):
    content = json.loads(path.read_text())
    content.update(changes)
    path.write_text(json.dumps(content))


def symlinked_weights(directory, tmp_path):
    outside = tmp_path / "elsewhere.safetensors"
    (directory / "model.safetensors").rename(outside)
    (directory / "model.safetensors").symlink_to(outside)


def nan_in_one_tensor(directory, tmp_path):
    tensors = load_file(directory / "model.safetensors")
    name = next(n for n in sorted(tensors) if "mlp" in n)
    tensors[name][0, 0] = float("nan")
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def inf_in_a_bf16_tensor(directory, tmp_path):
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(directory / "model.safetensors").items()}
    tensors["model.norm.weight"][3] = float("inf")
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


def tokenizer_larger_than_the_vocabulary(directory, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(directory)
    config.vocab_size -= 5  # weights and config agree with each other, not with the tokenizer
    (directory / "model.safetensors").unlink()
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)


def header_declares_more_than_it_holds(directory, tmp_path):
    path = directory / "model.safetensors"
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [dim * 2 for dim in header[name]["shape"]]
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length :])


def header_not_json(directory, tmp_path):
    path = directory / "model.safetensors"
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[:8] + b"\xff" * length + data[8 + length :])


CASES = {
    "symlink": (symlinked_weights, ["symbolic links", "model.safetensors", "cp -rL"]),
    "pickle, any case": (lambda d, t: (d / "PYTORCH_MODEL.BIN").write_bytes(b"\x80\x04"), ["pickle", "PYTORCH_MODEL.BIN"]),
    "other tensor format": (lambda d, t: (d / "model.gguf").write_bytes(b"GGUF"), ["model.gguf", "*.safetensors"]),
    "auto_map in tokenizer_config": (
        lambda d, t: edit_json(d / "tokenizer_config.json", auto_map={"AutoTokenizer": ["tok.MyTok", None]}),
        ["tokenizer_config.json has an auto_map", "trust_remote_code"],
    ),
    "nested auto_map in config": (
        lambda d, t: edit_json(d / "config.json", text_config={"auto_map": {"AutoModel": "m.M"}}),
        ["config.json has an auto_map"],
    ),
    "NaN": (nan_in_one_tensor, ["model.safetensors has NaN or Inf values in model.layers.0.mlp"]),
    "Inf in bfloat16": (inf_in_a_bf16_tensor, ["NaN or Inf values in model.norm.weight"]),
    "intermediate size": (
        lambda d, t: edit_json(d / "config.json", intermediate_size=256),
        ["tensor shapes disagree with config.json", "mlp", "[256, 64]", "intermediate_size=256"],
    ),
    "vocabulary size in config": (
        lambda d, t: edit_json(d / "config.json", vocab_size=4096),
        ["model.embed_tokens.weight", "vocab_size=4096"],
    ),
    "tokenizer larger than the embeddings": (
        tokenizer_larger_than_the_vocabulary, ["the tokenizer has", "resize_token_embeddings"],
    ),
    "header declares more data": (header_declares_more_than_it_holds, ["model.safetensors", "declares shape"]),
    "header not JSON": (header_not_json, ["model.safetensors has an unreadable safetensors header"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_checkpoint_is_refused_in_one_paragraph_and_the_registry_is_unchanged(
    case, home_env, registry_state, checkpoint_copy, tmp_path
):
    damage, expected = CASES[case]
    damage(checkpoint_copy, tmp_path)
    before = registry_state()

    result = runner.invoke(app, ["register", str(checkpoint_copy), "--name", "refused-model"])

    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.output
    message = " ".join(result.output.split())
    assert message.startswith("error: Refusing checkpoint"), message
    for text in expected:
        assert text in message, (text, message)
    assert registry_state() == before
