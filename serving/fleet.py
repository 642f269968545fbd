"""The running vLLM instances of one Fledge home, recorded so that any process can find,
reuse and stop them.

A release flow run starts servers that must outlive it (a promoted candidate keeps serving),
and a re-run after a crash must find the server the crashed run started instead of starting a
second one. Each instance is recorded in `state/instances.json` under a key (serving.naming:
`NAME/VERSION`, or `NAME/VERSION+baseline` for the champion's second instance) with the pid of
its guardian, which leads the instance's process group and stops it when its owner (the
serving plane: the process that runs the gateway) dies.
"""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict

from fledge.core.state import StatePaths, read_json, write_json
from serving.config import ServerConfig
from serving.launcher import LocalLauncher, ServerHandle
from serving.processes import alive, stop_group


class InstanceRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    served_model_name: str
    base_url: str  # OpenAI base URL, ending in /v1
    pid: int  # the guardian: leader of the instance's process group
    log_path: str
    model_dir: str
    max_model_len: int
    dtype: str | None = None
    kv_cache_gib: float | None = None
    cpu_cores: str | None = None
    started_at: float
    start_seconds: float

    def runs_like(self, config: ServerConfig) -> bool:
        """Whether this instance serves what `config` asks for, so it can be reused."""
        return (self.model_dir, self.max_model_len, self.dtype, self.kv_cache_gib, self.cpu_cores) == (
            str(config.model_dir), config.max_model_len, config.dtype, config.kv_cache_gib, config.cpu_cores)


def _healthy(record: InstanceRecord) -> bool:
    try:
        return httpx.get(record.base_url.removesuffix("/v1") + "/health", timeout=3.0).status_code == 200
    except httpx.HTTPError:
        return False


class Fleet:
    def __init__(self, state_dir: Path, launcher: LocalLauncher):
        self.files = StatePaths.under(Path(state_dir))
        self.launcher = launcher
        self._handles: dict[str, ServerHandle] = {}  # started by this process: stopped (and reaped) through them

    @contextmanager
    def _locked(self):
        self.files.root.mkdir(parents=True, exist_ok=True)
        with open(self.files.instances_lock, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _read(self) -> dict[str, InstanceRecord]:
        return {k: InstanceRecord.model_validate(v) for k, v in (read_json(self.files.instances) or {}).items()}

    def _write(self, records: dict[str, InstanceRecord]) -> None:
        write_json(self.files.instances, {k: r.model_dump() for k, r in records.items()})

    def records(self) -> dict[str, InstanceRecord]:
        """Live instances; records of dead ones are dropped."""
        with self._locked():
            records = self._read()
            live = {k: r for k, r in records.items() if alive(r.pid)}
            if live.keys() != records.keys():
                self._write(live)
            return live

    def get(self, key: str) -> InstanceRecord | None:
        record = self.records().get(key)
        return record if record is not None and _healthy(record) else None

    def ensure(self, key: str, config: ServerConfig) -> tuple[InstanceRecord, bool]:
        """The running instance under `key`, or a new one started from `config`. Returns the
        record and whether it was started now. A recorded instance that no longer answers is
        stopped and replaced."""
        existing = self.records().get(key)
        if existing is not None:
            if _healthy(existing) and existing.runs_like(config):
                return existing, False
            self.stop(key)
        handle = self.launcher.start(config)
        record = InstanceRecord(
            key=key, served_model_name=config.served_model_name, base_url=handle.base_url, pid=handle.pid,
            log_path=str(handle.log_path), model_dir=str(config.model_dir), max_model_len=config.max_model_len,
            dtype=config.dtype, kv_cache_gib=config.kv_cache_gib, cpu_cores=config.cpu_cores, started_at=time.time(),
            start_seconds=handle.started_s,
        )
        self._handles[key] = handle
        with open(self.files.instance_starts, "a") as starts:  # what serving cost, for reports
            starts.write(json.dumps({"key": key, "at": record.started_at, "seconds": handle.started_s}) + "\n")
        with self._locked():
            records = self._read()
            records[key] = record
            self._write(records)
        return record, True

    def stop(self, key: str, grace_s: float = 20.0) -> bool:
        """Stop the instance under `key`; False when none was running."""
        with self._locked():
            records = self._read()
            record = records.pop(key, None)
            self._write(records)
        handle = self._handles.pop(key, None)
        if handle is not None:
            handle.stop()
            return True
        return record is not None and stop_group(record.pid, grace_s)

    def start_intervals(self, since: float) -> list[tuple[float, float]]:
        """(began, ready) in epoch seconds of every server start since `since`."""
        path = self.files.instance_starts
        if not path.is_file():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [(row["at"] - row["seconds"], row["at"]) for row in rows if row["at"] >= since]

    def stop_all(self) -> list[str]:
        keys = list(self.records())
        for key in keys:
            self.stop(key)
        return keys
