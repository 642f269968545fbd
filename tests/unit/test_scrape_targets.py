"""The Prometheus targets of the serving plane: the file_sd content, written whole, and kept
current by the fleet only where the team stack made a targets directory."""

from __future__ import annotations

import json
import subprocess
import time

from fledge.core.scrape_targets import refresh_from_state, targets_dir, write_scrape_targets
from fledge.core.state import StatePaths, write_json
from serving.fleet import Fleet, InstanceRecord
from serving.launcher import LocalLauncher


def _read(directory):
    return json.loads((directory / "fledge.json").read_text())


def test_the_gateway_and_each_instance_become_one_entry_with_their_labels(tmp_path):
    path = write_scrape_targets(tmp_path, "http://127.0.0.1:8080",
                                [("tiny/2", "http://127.0.0.1:8102/v1"), ("tiny/1+baseline", "https://10.0.0.5:8101/x/v1")])
    assert path == tmp_path / "fledge.json"
    assert _read(tmp_path) == [
        {"targets": ["127.0.0.1:8080"], "labels": {"job": "fledge-gateway"}},
        {"targets": ["10.0.0.5:8101"], "labels": {"job": "vllm", "instance_key": "tiny/1+baseline",
                                                   "__metrics_path__": "/x/metrics", "__scheme__": "https"}},
        {"targets": ["127.0.0.1:8102"], "labels": {"job": "vllm", "instance_key": "tiny/2"}},
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["fledge.json"]  # no temporary left behind


def test_an_unchanged_plane_does_not_rewrite_the_file(tmp_path):
    path = write_scrape_targets(tmp_path, None, [("a/1", "http://127.0.0.1:9001/v1")])
    before = path.stat().st_mtime_ns
    time.sleep(0.01)
    write_scrape_targets(tmp_path, None, [("a/1", "http://127.0.0.1:9001/v1")])
    assert path.stat().st_mtime_ns == before
    write_scrape_targets(tmp_path, None, [])
    assert _read(tmp_path) == []


def test_without_the_stack_nothing_is_written(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    assert refresh_from_state(state) is None
    assert not (tmp_path / "stack").exists()


def _record(key: str, port: int, pid: int, adapter_of: str | None = None) -> InstanceRecord:
    return InstanceRecord(key=key, served_model_name=key, base_url=f"http://127.0.0.1:{port}/v1", pid=pid,
                          log_path="x.log", model_dir="/m", max_model_len=128, started_at=time.time(),
                          start_seconds=1.0, adapter_of=adapter_of)


def test_the_fleet_rewrites_the_targets_when_it_records_or_removes_an_instance(tmp_path):
    state = tmp_path / "state"
    directory = targets_dir(tmp_path)
    directory.mkdir(parents=True)
    write_json(StatePaths.under(state).plane, {"url": "http://127.0.0.1:8080", "models": ["m"], "pid": 1})
    dead = subprocess.Popen(["true"])
    dead.wait()
    fleet = Fleet(state, LocalLauncher(tmp_path / "logs"))
    fleet._write({"m/1": _record("m/1", 8101, dead.pid), "m/2": _record("m/2", 8101, dead.pid, adapter_of="m/1")})
    assert _read(directory) == [
        {"targets": ["127.0.0.1:8080"], "labels": {"job": "fledge-gateway"}},
        {"targets": ["127.0.0.1:8101"], "labels": {"job": "vllm", "instance_key": "m/1"}},  # the adapter: same process
    ]
    assert fleet.records() == {}  # the servers are dead: their records are dropped, and their targets
    assert _read(directory) == [{"targets": ["127.0.0.1:8080"], "labels": {"job": "fledge-gateway"}}]
