"""LoRA adapters as registry versions, on a real MLflow store: registered on the base model they
were trained on (`--base`), checked against that base's shapes, refused with the reason when
they cannot be served on it."""

import uuid

import pytest
import torch
from safetensors.torch import load_file, save_file

from fledge.core.tags import TAG_BASE, TAG_LAYOUT
from registry.adapters import adapter_base_problem
from registry.errors import CheckpointRefused

LLAMA_ONLY = frozenset({"LlamaForCausalLM"})


def make_adapter(base_dir, out_dir, *, hidden_size=None, use_dora=False):
    """A PEFT LoRA adapter (r=4 on q/v) on `base_dir`'s model, or on one of another width."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(base_dir)
    if hidden_size:
        config.hidden_size, config.head_dim = hidden_size, hidden_size
    torch.manual_seed(0)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                                 init_lora_weights=False, use_dora=use_dora))
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def base_version(registry, tiny_checkpoint):
    return registry.register(tiny_checkpoint, f"adapters-{uuid.uuid4().hex[:6]}", supported_architectures=LLAMA_ONLY)


def test_an_adapter_registered_on_its_base_is_tagged_and_materialized(registry, base_version, tiny_checkpoint, tmp_path):
    adapter = make_adapter(tiny_checkpoint, tmp_path / "adapter")
    version = registry.register(adapter, base_version.name, base=base_version.ref)
    assert version.tags[TAG_BASE] == base_version.ref and version.tags[TAG_LAYOUT] == "peft-adapter"
    served = registry.materialize(version.ref, tmp_path / "cache", LLAMA_ONLY)
    assert (served / "adapter_config.json").is_file() and (served / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("case, expected", [
    ("no base", "name the base model version it was trained on with --base"),
    ("another base", "the adapter does not fit its base model"),
    ("dora", "DoRA"),
    ("nan", "adapter_model.safetensors has NaN or Inf values"),
    ("base is an adapter", "is itself an adapter"),
])
def test_an_adapter_that_cannot_be_served_on_its_base_is_refused(case, expected, registry, base_version,
                                                               tiny_checkpoint, tmp_path):
    adapter = make_adapter(tiny_checkpoint, tmp_path / "adapter", hidden_size=128 if case == "another base" else None,
                           use_dora=case == "dora")
    base = None if case == "no base" else base_version.ref
    if case == "nan":
        tensors = load_file(adapter / "adapter_model.safetensors")
        next(iter(tensors.values()))[0, 0] = float("nan")
        save_file(tensors, adapter / "adapter_model.safetensors")
    if case == "base is an adapter":
        base = registry.register(make_adapter(tiny_checkpoint, tmp_path / "first"), base_version.name,
                                 base=base_version.ref).ref
    before = [v.version for v in registry.versions(base_version.name)]
    with pytest.raises(CheckpointRefused) as error:
        registry.register(adapter, base_version.name, base=base)
    assert expected in str(error.value)
    assert [v.version for v in registry.versions(base_version.name)] == before


def test_an_adapter_is_released_only_where_its_base_is_what_the_champion_runs_on():
    assert adapter_base_problem("m/5", "m/1", "m/1", None) is None  # champion is the base
    assert adapter_base_problem("m/5", "m/1", "m/4", "m/1") is None  # champion is an adapter on the same base
    assert adapter_base_problem("m/5", None, "m/4", None) is None  # a full model: not this rule's business
    mismatch = adapter_base_problem("m/5", "m/1", "m/2", None)
    assert "trained on m/1, but the champion m/2 is m/2" in mismatch and "retrain it on m/2" in mismatch


def test_quantizing_an_adapter_is_refused_with_the_base_to_quantize(registry, base_version, tiny_checkpoint,
                                                                   session_home, tmp_path):
    from fledge.core.home import FledgeHome
    from fledge.services.context import Workspace
    from fledge.services.quantization import quantize_version
    from serving.quantize import SchemeNotServable

    adapter = registry.register(make_adapter(tiny_checkpoint, tmp_path / "adapter"), base_version.name,
                                base=base_version.ref)
    with pytest.raises(SchemeNotServable, match="quantization applies to full models. Quantize the base"):
        quantize_version(adapter.ref, "w8a8-int8", Workspace(FledgeHome(session_home).ensure(), registry))
