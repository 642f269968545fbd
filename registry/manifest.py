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


def build_manifest(directory: Path) -> dict:
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        relative = path.relative_to(directory).as_posix()
        if relative == MANIFEST_FILE:
            continue
        files[relative] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return {"algorithm": "sha256", "files": files}


def manifest_bytes(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def manifest_digest(manifest: dict) -> str:
    return hashlib.sha256(manifest_bytes(manifest)).hexdigest()


def total_size(manifest: dict) -> int:
    return sum(entry["size"] for entry in manifest["files"].values())


def verify_directory(directory: Path, manifest: dict) -> list[str]:
    """Every difference between the directory and its manifest, as readable problems."""
    problems = []
    expected = manifest["files"]
    present = {
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p.relative_to(directory).as_posix() != MANIFEST_FILE
    }
    for relative in sorted(set(expected) - present):
        problems.append(f"{relative} is missing")
    for relative in sorted(present - set(expected)):
        problems.append(f"{relative} is not in the manifest")
    for relative in sorted(set(expected) & present):
        path = directory / relative
        if path.stat().st_size != expected[relative]["size"]:
            problems.append(
                f"{relative} has {path.stat().st_size} bytes, the manifest says {expected[relative]['size']}"
            )
        elif sha256_file(path) != expected[relative]["sha256"]:
            problems.append(f"{relative} has a different sha256 than the manifest")
    return problems
