"""The registry against a real MLflow store on SQLite."""

import json
from pathlib import Path

import pytest

from registry import manifest as mf
from registry.errors import (
    CheckpointRefused,
    ChecksumMismatch,
    InvalidReference,
    UnknownAlias,
    UnknownModel,
    UnknownVersion,
)
from registry.refs import CHALLENGER, CHAMPION, PREVIOUS
from fledge.core.tags import TAG_MANIFEST, TAG_SIZE, TAG_STATUS, Status

LLAMA_ONLY = frozenset({"LlamaForCausalLM"})


def test_register_records_manifest_size_and_candidate_status(registry, tiny_checkpoint, model_name):
    version = registry.register(tiny_checkpoint, model_name, description="first", supported_architectures=LLAMA_ONLY)
    assert version.ref == f"{model_name}/1"
    assert version.status == Status.CANDIDATE
    assert version.description == "first"
    manifest = mf.build_manifest(tiny_checkpoint)
    assert version.tags[TAG_MANIFEST] == mf.manifest_digest(manifest)
    assert int(version.tags[TAG_SIZE]) == mf.total_size(manifest)
    run = registry.client.get_run(version.run_id)
    assert run.info.status == "FINISHED"


def test_aliases_are_set_moved_and_resolved(registry, tiny_checkpoint, model_name):
    first = registry.register(tiny_checkpoint, model_name, alias=CHAMPION)
    second = registry.register(tiny_checkpoint, model_name, alias=CHALLENGER)
    assert registry.resolve(f"{model_name}@{CHAMPION}").version == first.version
    assert registry.resolve(f"{model_name}@{CHALLENGER}").version == second.version

    registry.set_alias(model_name, PREVIOUS, first.version)
    registry.set_alias(model_name, CHAMPION, second.version)
    registry.delete_alias(model_name, CHALLENGER)
    assert registry.aliases(model_name) == {CHAMPION: second.version, PREVIOUS: first.version}
    listed = {v.version: v.aliases for v in registry.versions(model_name)}
    assert listed == {first.version: (PREVIOUS,), second.version: (CHAMPION,)}


def test_status_and_extra_tags_follow_transitions(registry, tiny_checkpoint, model_name):
    version = registry.register(tiny_checkpoint, model_name)
    registry.set_status(model_name, version.version, Status.REJECTED, **{"fledge.reason": "safety gate failed"})
    again = registry.get_version(model_name, version.version)
    assert again.tags[TAG_STATUS] == "rejected"
    assert again.tags["fledge.reason"] == "safety gate failed"


def test_materialize_downloads_verifies_and_reuses(registry, tiny_checkpoint, model_name, tmp_path):
    registry.register(tiny_checkpoint, model_name, alias=CHAMPION)
    directory = registry.materialize(f"{model_name}@{CHAMPION}", tmp_path / "cache")
    assert directory == tmp_path / "cache" / model_name / "1"
    original = {p.name: p.read_bytes() for p in tiny_checkpoint.iterdir()}
    served = {p.name: p.read_bytes() for p in directory.iterdir() if p.name != mf.MANIFEST_FILE}
    assert served == original
    assert registry.materialize(f"{model_name}/1", tmp_path / "cache") == directory


def test_a_tampered_local_copy_is_replaced_by_a_verified_download(registry, tiny_checkpoint, model_name, tmp_path):
    registry.register(tiny_checkpoint, model_name)
    directory = registry.materialize(f"{model_name}/1", tmp_path / "cache")
    (directory / "config.json").write_text("{}")
    directory = registry.materialize(f"{model_name}/1", tmp_path / "cache")
    assert (directory / "config.json").read_bytes() == (tiny_checkpoint / "config.json").read_bytes()


def test_a_damaged_stored_artifact_is_never_materialized(registry, checkpoint_copy, model_name, tmp_path):
    version = registry.register(checkpoint_copy, model_name)
    stored = Path(registry.client.get_run(version.run_id).info.artifact_uri.removeprefix("file://"))
    weights = stored / "checkpoint" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x55  # bit rot in the artifact store, same size
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch) as error:
        registry.materialize(version.ref, tmp_path / "cache")
    assert "model.safetensors" in str(error.value) and "Re-register" in str(error.value)
    assert not (tmp_path / "cache" / model_name / "1").exists()


def test_a_swapped_manifest_is_caught(registry, checkpoint_copy, model_name, tmp_path):
    version = registry.register(checkpoint_copy, model_name)
    stored = Path(registry.client.get_run(version.run_id).info.artifact_uri.removeprefix("file://")) / "checkpoint"
    (stored / "config.json").write_text("{}")
    manifest = mf.build_manifest(stored)  # an attacker re-computes the manifest to match
    (stored / mf.MANIFEST_FILE).write_bytes(mf.manifest_bytes(manifest))
    with pytest.raises(ChecksumMismatch, match="manifest itself differs"):
        registry.materialize(version.ref, tmp_path / "cache")


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda d: (d / "pytorch_model.bin").write_bytes(b"pickle"), "pickle"),
        (lambda d: (d / "modeling_x.py").write_text("x = 1"), "trust_remote_code"),
        (lambda d: (d / "config.json").unlink(), "config.json is missing"),
        (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer"),
        (
            lambda d: (d / "config.json").write_text(json.dumps({"architectures": ["MysteryLM"]})),
            "MysteryLM",
        ),
    ],
    ids=["pickle", "remote-code", "no-config", "no-tokenizer", "unknown-architecture"],
)
def test_refused_checkpoints_leave_the_registry_untouched(registry, registry_state, checkpoint_copy, model_name, damage,
                                                          expected):
    registry.register(checkpoint_copy, model_name, alias=CHAMPION)
    before = registry_state()
    damage(checkpoint_copy)
    with pytest.raises(CheckpointRefused, match=expected):
        registry.register(checkpoint_copy, model_name, alias=CHALLENGER, supported_architectures=LLAMA_ONLY)
    assert registry_state() == before


def test_an_invalid_alias_is_refused_before_anything_is_written(registry, registry_state, tiny_checkpoint, model_name):
    before = registry_state()
    with pytest.raises(InvalidReference, match="latest"):
        registry.register(tiny_checkpoint, model_name, alias="latest")
    assert registry_state() == before


def test_unknown_model_version_and_alias_errors_say_what_exists(registry, tiny_checkpoint, model_name):
    registry.register(tiny_checkpoint, model_name, alias=CHAMPION)
    with pytest.raises(UnknownModel, match="fledge register"):
        registry.resolve("no-such-model@champion")
    with pytest.raises(UnknownVersion, match=r"versions: 1"):
        registry.resolve(f"{model_name}/9")
    with pytest.raises(UnknownAlias, match=r"champion -> 1"):
        registry.resolve(f"{model_name}@challenger")


def test_register_once_reuses_a_version_with_identical_files(registry, tiny_checkpoint, model_name):
    first, created = registry.register_once(tiny_checkpoint, model_name, alias=CHAMPION)
    again, created_again = registry.register_once(tiny_checkpoint, model_name, alias=CHAMPION)
    assert created and not created_again
    assert again.version == first.version
    assert len(registry.versions(model_name)) == 1
