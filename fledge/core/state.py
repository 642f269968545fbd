"""Fledge's runtime state under FLEDGE_HOME/state: every file named here, all JSON written by
one atomic writer.

A crash must never leave half a file, and an acknowledged change must survive a power cut:
the writer puts the bytes in a temporary file in the same directory, fsyncs it, renames it
over the target (atomic on POSIX) and fsyncs the directory so the rename itself is durable.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: str | bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` atomically and durably; `mode` (e.g. 0o600) is set before
    the file is visible under its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_if_changed(path: Path, content: str) -> bool:
    """`write_atomic` unless the file already holds `content`; True when it was written (a
    reader watching the file, e.g. Prometheus, sees no change otherwise)."""
    if path.is_file() and path.read_text() == content:
        return False
    write_atomic(path, content)
    return True


def create_once(path: Path, data: str, mode: int = 0o600) -> str:
    """Write `data` to `path` unless it exists; returns what the file holds. Two processes
    racing here end up reading the same content: the file appears under its name whole
    (hard link of a finished temporary), and only the first link succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        Path(temporary).unlink(missing_ok=True)
    return path.read_text()


def write_json(path: Path, payload: Any) -> None:
    write_atomic(path, json.dumps(payload, indent=2))


def read_json(path: Path) -> Any | None:
    """The file's JSON, or None when there is no file."""
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _slug(model: str) -> str:
    return model.replace("/", "_")


@dataclass(frozen=True)
class StatePaths:
    """The files under one home's `state/` directory."""

    root: Path
    instances: Path  # the vLLM servers of this home (serving.fleet)
    instances_lock: Path
    instance_starts: Path  # one JSON line per server start: what serving cost, for reports
    plane: Path  # where the running serving plane (gateway) listens, and its pid
    routes: Path  # the gateway's route table, persisted so a restarted gateway keeps the split
    audit: Path  # every admin change of the gateway, one JSON line each (serving.gateway.audit)
    leases: Path  # who may change each model now (serving.gateway.leases)
    admin_token: Path
    quantized: Path  # scratch space for quantized checkpoints before they are registered
    used_requests: Path  # signed release requests already accepted: each counts once (services.approval)

    @classmethod
    def under(cls, root: Path) -> "StatePaths":
        return cls(root=root, instances=root / "instances.json", instances_lock=root / "instances.lock",
                   instance_starts=root / "instance-starts.jsonl", plane=root / "gateway.json",
                   routes=root / "gateway-routes.json", audit=root / "gateway-audit.jsonl", leases=root / "leases.json",
                   admin_token=root / "gateway-admin-token",
                   quantized=root / "quantized", used_requests=root / "used-release-requests.json")

    def release(self, model: str) -> Path:
        """The release in progress for a model (services.releases.ReleaseRecord)."""
        return self.root / f"release-{_slug(model)}.json"

    def rollout(self, model: str) -> Path:
        """The canary rollout's state (serving.canary.state_machine.RolloutState)."""
        return self.root / f"rollout-{_slug(model)}.json"

    def managed_rollout(self, model: str) -> Path:
        """The rollout the plane's controller owns: its spec and stage (services.controller)."""
        return self.root / f"managed-rollout-{_slug(model)}.json"

    def managed_rollouts(self) -> list[Path]:
        return sorted(self.root.glob("managed-rollout-*.json"))
