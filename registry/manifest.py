"""sha256 manifest of a checkpoint directory: what was registered is what gets served."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

MANIFEST_FILE = "fledge-manifest.json"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def build_manifest(directory: Path, *, layout: dict | None = None) -> dict:
    """Every file under `directory` with its sha256 and size. `layout` (for versions Fledge
    adopted: their layout, flavor and `served` map of served path -> artifact path) is recorded
    with them, so the served directory can be checked against the files as they were logged."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative == MANIFEST_FILE:
            continue
        files[relative] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return {"algorithm": "sha256", "files": files, **({"layout": layout} if layout else {})}


def manifest_bytes(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def manifest_digest(manifest: dict) -> str:
    return hashlib.sha256(manifest_bytes(manifest)).hexdigest()


def total_size(manifest: dict) -> int:
    return sum(entry["size"] for entry in manifest["files"].values())


def served_files(manifest: dict) -> dict[str, tuple[str, dict]]:
    """served path -> (artifact path, entry): identical paths unless the version was adopted
    from another layout (its files renamed into one Hugging Face directory)."""
    files = manifest["files"]
    served = (manifest.get("layout") or {}).get("served")
    if served is None:
        return {path: (path, entry) for path, entry in files.items()}
    return {path: (artifact, files[artifact]) for path, artifact in served.items() if artifact in files}


def verify_directory(directory: Path, manifest: dict, *, served: bool = True) -> list[str]:
    """Every difference between the directory and its manifest, as readable problems named by
    the artifact path (as the version was logged). `served=False` checks a raw download."""
    problems = []
    expected = served_files(manifest) if served else {p: (p, e) for p, e in manifest["files"].items()}
    present = {
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if (p.is_file() or p.is_symlink()) and p.relative_to(directory).as_posix() != MANIFEST_FILE
    }

    def named(path: str) -> str:
        artifact = expected[path][0] if path in expected else path
        return artifact if artifact == path else f"{artifact} (served as {path})"

    for relative in sorted(set(expected) - present):
        problems.append(f"{named(relative)} is missing")
    for relative in sorted(present - set(expected)):
        problems.append(f"{relative} is not in the manifest")
    for relative in sorted(set(expected) & present):
        path, entry = directory / relative, expected[relative][1]
        if path.is_symlink():
            problems.append(f"{named(relative)} is a symbolic link")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{named(relative)} has {path.stat().st_size} bytes, the manifest says {entry['size']}")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{named(relative)} has a different sha256 than the manifest")
    return problems
