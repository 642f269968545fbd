"""The running vLLM instances of one Fledge home, recorded so that any process can find,
reuse and stop them.

A release flow run starts servers that must outlive it (a promoted candidate keeps serving),
and a re-run after a crash must find the server the crashed run started instead of starting a
second one. Each instance is recorded in `state/instances.json` under a key (serving.naming:
`NAME/VERSION`, or `NAME/VERSION+baseline` for the champion's second instance) with the pid of
its guardian, which leads the instance's process group. A LoRA adapter loaded onto a running
instance is recorded too, under its own key, with `adapter_of` naming the instance that holds it.

The record owns the server (serving.guardian): each server is in the record and each record
has a live server. A server stops when its record is removed (`stop`) or its lease lapses,
never because the process that started it, or the gateway, exited: a restarted serving plane
finds its servers still serving and re-attaches (`reattach`). Leases are kept by the serving
plane for every instance of its home, and by any process for the instances it started
(`keep_leases`); one that no process renews for `lease_s` stops by itself. Lease times are the
monotonic clock, shared by every process of the machine and never stepped.
"""

from __future__ import annotations

import fcntl
import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict

from fledge.core.scrape_targets import refresh_from_state
from fledge.core.state import StatePaths, read_json, write_json
from serving import lora
from serving.config import ServerConfig, lora_signature
from serving.errors import LaunchError
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
    lora: str | None = None  # serving.config.lora_signature: the LoRA settings, when the server takes adapters
    adapter_of: str | None = None  # a LoRA adapter loaded on the instance under this key (same process)
    started_at: float
    start_seconds: float
    lease_expires: float | None = None  # time.monotonic(): past it, the guardian stops the server

    def lease_lapsed(self, now: float) -> bool:
        return self.lease_expires is not None and self.lease_expires <= now

    def runs_like(self, config: ServerConfig) -> bool:
        """Whether this instance serves what `config` asks for, so it can be reused."""
        lora = lora_signature(config)
        return (self.model_dir, self.max_model_len, self.dtype, self.kv_cache_gib, self.cpu_cores, self.lora) == (
            str(config.model_dir), config.max_model_len, config.dtype, config.kv_cache_gib, config.cpu_cores, lora)


def _healthy(record: InstanceRecord) -> bool:
    try:
        return httpx.get(record.base_url.removesuffix("/v1") + "/health", timeout=3.0).status_code == 200
    except httpx.HTTPError:
        return False


DEFAULT_LEASE_S = 300.0


class Fleet:
    def __init__(self, state_dir: Path, launcher: LocalLauncher, lease_s: float = DEFAULT_LEASE_S):
        self.files = StatePaths.under(Path(state_dir))
        self.launcher = launcher
        self.lease_s = lease_s
        self._handles: dict[str, ServerHandle] = {}  # started by this process: stopped (and reaped) through them
        self._loaded: set[str] = set()  # adapters this process loaded: their records' leases are kept too
        self._keeper: threading.Thread | None = None
        self._keep_all = False
        self._keeper_stop = threading.Event()

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
        try:  # the team stack's Prometheus targets follow the fleet; a no-op without the stack
            refresh_from_state(self.files.root)
        except Exception:  # monitoring never fails serving: the next write tries again
            pass

    def records(self) -> dict[str, InstanceRecord]:
        """Live instances; records of dead ones (and of lapsed leases) are dropped."""
        now = time.monotonic()
        with self._locked():
            records = self._read()
            live = {k: r for k, r in records.items() if alive(r.pid) and not r.lease_lapsed(now)}
            if live.keys() != records.keys():
                self._write(live)
            return live

    def renew(self, keys: set[str] | None = None) -> list[str]:
        """Extend the leases of `keys` (every record when None) by `lease_s` from now."""
        expires = time.monotonic() + self.lease_s
        with self._locked():
            records = self._read()
            renewed = [k for k in records if keys is None or k in keys]
            for key in renewed:
                records[key] = records[key].model_copy(update={"lease_expires": expires})
            if renewed:
                self._write(records)
            return renewed

    def keep_leases(self, every_record: bool = False) -> None:
        """Renew leases from a background thread while this process lives: of the instances it
        started, or (`every_record`: the serving plane) of every instance of the home."""
        self._keep_all = self._keep_all or every_record
        if self._keeper is not None:
            return

        def keep() -> None:
            while not self._keeper_stop.wait(self.lease_s / 5):
                if not (self._keep_all or self._handles or self._loaded):
                    self._keeper = None  # nothing of ours left: the next start begins another
                    return
                try:
                    self.renew(None if self._keep_all else set(self._handles) | self._loaded)
                except Exception:  # a full disk or a lock held: try again at the next beat
                    continue

        self._keeper = threading.Thread(target=keep, name="fledge-leases", daemon=True)
        self._keeper.start()

    def release_leases(self) -> None:
        """Stop renewing (the instances keep serving until their leases lapse or a plane renews them)."""
        self._keeper_stop.set()

    def reattach(self) -> tuple[list[str], list[str]]:
        """A starting serving plane's first step: every recorded instance that answers its
        health check is kept (its lease renewed); every other one is stopped and its record
        removed. Returns (kept, removed)."""
        kept, removed = [], []
        records = self.records()
        for key in sorted(records, key=lambda k: records[k].adapter_of is not None):  # hosts before adapters
            if key in removed:
                continue
            if self.get(key) is not None:
                kept.append(key)
                continue
            for adapter in [k for k, r in records.items() if r.adapter_of == key]:
                self.stop(adapter)
                removed.append(adapter)
            self.stop(key)
            removed.append(key)
        self.renew(set(kept))
        return kept, removed

    def get(self, key: str) -> InstanceRecord | None:
        record = self.records().get(key)
        if record is None or not _healthy(record):
            return None
        if record.adapter_of is not None:
            try:
                if record.served_model_name not in lora.served_names(record.base_url):
                    return None
            except httpx.HTTPError:
                return None
        return record

    def load_adapter(self, key: str, host_key: str, name: str, adapter_dir: Path) -> tuple[InstanceRecord, bool]:
        """A LoRA adapter loaded under `name` onto the running instance `host_key`, recorded as
        `key` (same process, no new server). Returns the record and whether it was loaded now."""
        host = self.get(host_key)
        if host is None or host.lora is None:
            raise LaunchError(f"No running instance {host_key} with LoRA enabled to load {name} onto; serve its base "
                              "model with a policy whose serving.lora.enabled is true (a quantized base is served "
                              "without LoRA: vLLM's CPU build does not start it with LoRA).")
        existing = self.get(key)
        if existing is not None and (existing.adapter_of, existing.model_dir) == (host_key, str(adapter_dir)):
            return existing, False
        lora.load_adapter(host.base_url, name, adapter_dir)
        record = host.model_copy(update={"key": key, "served_model_name": name, "model_dir": str(adapter_dir),
                                         "adapter_of": host_key, "started_at": time.time(), "start_seconds": 0.0,
                                         "lease_expires": time.monotonic() + self.lease_s})
        with self._locked():
            records = self._read()
            records[key] = record
            self._write(records)
        self._loaded.add(key)
        self.keep_leases()
        return record, True

    def ensure(self, key: str, config: ServerConfig) -> tuple[InstanceRecord, bool]:
        """The running instance under `key`, or a new one started from `config`. Returns the
        record and whether it was started now. A recorded instance that no longer answers is
        stopped and replaced."""
        existing = self.records().get(key)
        if existing is not None:
            if _healthy(existing) and existing.runs_like(config):
                return existing, False
            self.stop(key)
        handle = self.launcher.start(config, record=(self.files.instances, key))
        record = InstanceRecord(
            key=key, served_model_name=config.served_model_name, base_url=handle.base_url, pid=handle.pid,
            log_path=str(handle.log_path), model_dir=str(config.model_dir), max_model_len=config.max_model_len,
            dtype=config.dtype, kv_cache_gib=config.kv_cache_gib, cpu_cores=config.cpu_cores,
            lora=lora_signature(config), started_at=time.time(),
            start_seconds=handle.started_s, lease_expires=time.monotonic() + self.lease_s,
        )
        self._handles[key] = handle
        self.keep_leases()
        with open(self.files.instance_starts, "a") as starts:  # what serving cost, for reports
            starts.write(json.dumps({"key": key, "at": record.started_at, "seconds": handle.started_s}) + "\n")
        with self._locked():
            records = self._read()
            records[key] = record
            self._write(records)
        return record, True

    def stop(self, key: str, grace_s: float = 20.0) -> bool:
        """Stop the instance under `key`; False when none was running. An adapter is unloaded
        from its host; a host still holding adapters keeps running (they need it)."""
        with self._locked():
            records = self._read()
            record = records.get(key)
            if record is not None and record.adapter_of is None and any(r.adapter_of == key for r in records.values()):
                return False
            records.pop(key, None)
            self._write(records)
        self._loaded.discard(key)
        if record is not None and record.adapter_of is not None:
            return lora.unload_adapter(record.base_url, record.served_model_name)
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
        records = self.records()
        keys = sorted(records, key=lambda k: records[k].adapter_of is None)  # adapters before their hosts
        for key in keys:
            self.stop(key)
        return keys
