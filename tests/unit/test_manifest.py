from registry import manifest as mf


def test_an_untouched_directory_verifies(checkpoint_copy):
    manifest = mf.build_manifest(checkpoint_copy)
    assert mf.verify_directory(checkpoint_copy, manifest) == []
    assert mf.total_size(manifest) == sum(p.stat().st_size for p in checkpoint_copy.iterdir())


def test_changed_missing_and_extra_files_are_each_named(checkpoint_copy):
    manifest = mf.build_manifest(checkpoint_copy)
    config = checkpoint_copy / "config.json"
    config.write_text(config.read_text().replace("64", "65", 1))  # same size class, other bytes
    (checkpoint_copy / "tokenizer.json").unlink()
    (checkpoint_copy / "surprise.txt").write_text("hello")
    problems = " | ".join(mf.verify_directory(checkpoint_copy, manifest))
    assert "config.json" in problems
    assert "tokenizer.json is missing" in problems
    assert "surprise.txt is not in the manifest" in problems


def test_same_size_bit_flip_is_caught(checkpoint_copy):
    manifest = mf.build_manifest(checkpoint_copy)
    weights = checkpoint_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert mf.verify_directory(checkpoint_copy, manifest) == ["model.safetensors has a different sha256 than the manifest"]


def test_the_digest_depends_on_content_not_on_dict_order(checkpoint_copy):
    manifest = mf.build_manifest(checkpoint_copy)
    reordered = {"files": dict(reversed(list(manifest["files"].items()))), "algorithm": "sha256"}
    assert mf.manifest_digest(manifest) == mf.manifest_digest(reordered)
