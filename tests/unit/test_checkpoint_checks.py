"""Static refusals of checkpoint directories: no MLflow, no vLLM."""

import json

import pytest

from registry.checkpoint import checkpoint_problems, validate_checkpoint
from registry.errors import CheckpointRefused

LLAMA_ONLY = frozenset({"LlamaForCausalLM"})


def refusal(directory, archs=LLAMA_ONLY) -> str:
    with pytest.raises(CheckpointRefused) as error:
        validate_checkpoint(directory, archs)
    return str(error.value)


def test_a_good_checkpoint_passes(checkpoint_copy):
    assert checkpoint_problems(checkpoint_copy, LLAMA_ONLY) == []


def test_pickle_weights_are_refused_with_the_fix(checkpoint_copy):
    (checkpoint_copy / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    message = refusal(checkpoint_copy)
    assert "pickle" in message and "pytorch_model.bin" in message and "safetensors" in message


def test_remote_code_is_refused(checkpoint_copy):
    (checkpoint_copy / "modeling_custom.py").write_text("print('hi')")
    assert "trust_remote_code" in refusal(checkpoint_copy)


def test_auto_map_in_config_is_refused(checkpoint_copy):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.Model"}
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    assert "auto_map" in refusal(checkpoint_copy)


def test_missing_config_is_refused(checkpoint_copy):
    (checkpoint_copy / "config.json").unlink()
    assert "config.json is missing" in refusal(checkpoint_copy)


def test_missing_tokenizer_is_refused(checkpoint_copy):
    (checkpoint_copy / "tokenizer.json").unlink()
    assert "no tokenizer" in refusal(checkpoint_copy)


def test_unknown_architecture_is_refused(checkpoint_copy):
    config = json.loads((checkpoint_copy / "config.json").read_text())
    config["architectures"] = ["FancyNewLM"]
    (checkpoint_copy / "config.json").write_text(json.dumps(config))
    message = refusal(checkpoint_copy)
    assert "FancyNewLM" in message and "vLLM" in message


def test_truncated_weights_are_refused(checkpoint_copy):
    weights = checkpoint_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    message = refusal(checkpoint_copy)
    assert "model.safetensors is damaged" in message and "truncated" in message


def test_every_problem_is_reported_at_once(checkpoint_copy):
    (checkpoint_copy / "config.json").unlink()
    (checkpoint_copy / "tokenizer.json").unlink()
    (checkpoint_copy / "extra.pt").write_bytes(b"x")
    assert len(checkpoint_problems(checkpoint_copy, LLAMA_ONLY)) == 3


def test_a_file_instead_of_a_directory_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"x")
    assert "not a directory" in refusal(path)
