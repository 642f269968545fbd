"""The team stack on this machine: up from nothing, idempotent, each server doing its job
(MLflow with proxied artifacts, Prefect with both workers heartbeating, Prometheus scraping
the targets the serving fleet writes), and down leaving no process behind.

The tests share one stack (conftest.stack) and run in file order; the last one takes it down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.stack, pytest.mark.timeout(300)]

COMPONENTS = {"postgres", "prometheus", "mlflow", "prefect", "worker-cpu", "worker-gpu"}


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_up_from_nothing_then_every_component_is_healthy(stack):
    from fledge.stack import status

    rows = status(stack.home, log=None)
    assert {row.name for row in rows} == COMPONENTS
    assert all(row.healthy for row in rows), [(r.name, r.running, r.log) for r in rows if not r.healthy]
    assert stack.cold_up_s < 120, f"cold up took {stack.cold_up_s:.0f} s"
    if os.geteuid() == 0:  # PostgreSQL runs as postgres, in a cluster that user can reach: outside the home
        import psutil

        assert psutil.Process(stack.record().components["postgres"].pid).username() == "postgres"
        assert not stack.layout.pgdata.is_relative_to(stack.home)
    env = (stack.layout.env_file).read_text()
    assert f"export PREFECT_API_URL={stack.url('prefect')}/api" in env
    assert f"export MLFLOW_TRACKING_URI={stack.url('mlflow')}" in env
    # The status command's exit code says it too.
    cli = subprocess.run([sys.executable, "-m", "fledge.stack", "status", "--home", str(stack.home)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert cli.returncode == 0, cli.stdout + cli.stderr


def test_a_second_up_is_fast_and_changes_no_pid(stack):
    before = stack.pids()
    began = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "fledge.stack", "up", "--home", str(stack.home)],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    seconds = time.monotonic() - began
    assert result.returncode == 0, result.stdout + result.stderr
    assert stack.pids() == before
    assert seconds < 10, f"a warm up took {seconds:.1f} s:\n{result.stdout}"


def test_mlflow_server_tracks_and_proxies_artifacts(stack, monkeypatch, tmp_path):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack.url("mlflow"))
    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment(f"stack-test-{time.time_ns()}")
    assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:")
    run = client.create_run(experiment_id)
    client.log_metric(run.info.run_id, "loss", 0.25)
    artifact = tmp_path / "note.txt"
    artifact.write_text("through the server")
    client.log_artifact(run.info.run_id, str(artifact))
    client.set_terminated(run.info.run_id)

    assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.25}
    assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["note.txt"]
    stored = list(stack.layout.artifacts.rglob("note.txt"))  # on the server's side, not the client's
    assert len(stored) == 1 and stored[0].read_text() == "through the server"


def test_prefect_server_has_both_pools_and_heartbeating_workers(stack):
    from fledge.stack.components.workers import worker_name

    api = stack.url("prefect") + "/api"
    assert httpx.get(f"{api}/health", timeout=10).json() is True
    for pool in ("cpu", "gpu"):
        info = httpx.get(f"{api}/work_pools/{pool}", timeout=10).json()
        assert info["type"] == "process"
        workers = httpx.post(f"{api}/work_pools/{pool}/workers/filter", json={}, timeout=10).json()
        mine = [w for w in workers if w["name"] == worker_name(pool)]
        assert mine and mine[0]["status"] == "ONLINE" and mine[0]["last_heartbeat_time"], workers

    # The gpu worker is set up as on another host: only the URLs are shared.
    record = stack.record().components
    cpu, gpu = _environ(record["worker-cpu"].pid), _environ(record["worker-gpu"].pid)
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "FLEDGE_PLANE_URL"):
        assert cpu[name] == gpu[name]
    for name in ("HOME", "PREFECT_HOME", "FLEDGE_HOME"):
        assert cpu.get(name) != gpu[name] and gpu[name].startswith(str(stack.layout.worker_dir("gpu")))
    assert cpu["FLEDGE_GPU_WORK_POOL"] == "gpu" and "FLEDGE_GPU_WORK_POOL" not in gpu
    import psutil

    assert psutil.Process(record["worker-gpu"].pid).cwd() == str(stack.layout.worker_dir("gpu"))
    assert psutil.Process(record["worker-cpu"].pid).cwd() == str(ROOT)


def test_prometheus_scrapes_the_targets_written_for_the_fleet(stack):
    from prometheus_client import CollectorRegistry, Gauge, start_http_server

    from fledge.core.scrape_targets import write_scrape_targets
    from fledge.stack.ports import free_port

    base = stack.url("prometheus")
    assert httpx.get(f"{base}/-/ready", timeout=10).status_code == 200
    registry = CollectorRegistry()
    Gauge("fledge_stack_test", "a metric to scrape", registry=registry).set(1)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        url = f"http://127.0.0.1:{port}"
        write_scrape_targets(stack.layout.targets, url, [("tiny/1", f"{url}/v1")])
        deadline, up = time.monotonic() + 25, {}
        while time.monotonic() < deadline:
            result = httpx.get(f"{base}/api/v1/query", params={"query": "up"}, timeout=10).json()["data"]["result"]
            up = {(r["metric"]["job"], r["metric"].get("instance_key")): r["value"][1] for r in result}
            if up.get(("fledge-gateway", None)) == "1" and up.get(("vllm", "tiny/1")) == "1":
                break
            time.sleep(0.5)
        assert up.get(("fledge-gateway", None)) == "1" and up.get(("vllm", "tiny/1")) == "1", up
    finally:
        write_scrape_targets(stack.layout.targets, None, [])
        server.shutdown()
        thread.join(timeout=5)
