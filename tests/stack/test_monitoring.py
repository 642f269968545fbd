"""The serving alerts and the dashboard against the team stack's live Prometheus.

A gateway on loopback routes model `m` half to a healthy version and half to a bad one (scripted
backends: 40 % of its requests fail, its streams start after 2.5 s and drip a chunk every
0.7 s), and model `idle` to a version nobody asks for. Prometheus scrapes the gateway through a
file_sd file beside the fleet's. With the rules at their fast windows (the production rules,
windows of minutes, are put back afterwards), the error-rate, TTFT, ITL and no-traffic alerts
fire for the bad version and the idle model, and only for them; then every query of every
dashboard panel, run as Grafana would send it, returns series.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from support.backend import Script, ScriptedBackend

from fledge.core.policy import load_policy
from fledge.core.scrape_targets import scrape_targets
from fledge.stack.components.prometheus import install_alert_rules, reload
from serving.gateway.client import GatewayAdmin
from serving.gateway.routes import Backend
from serving.gateway.server import BackgroundGateway, build_gateway
from serving.monitoring.dashboard import build, concrete, panel_queries
from serving.monitoring.rules import AlertSettings, render

pytestmark = [pytest.mark.stack, pytest.mark.timeout(600)]

TARGETS_FILE = "monitoring-test.json"
EXPECTED = {("FledgeVersionErrorRate", "m/2"), ("FledgeTTFTp95High", "m/2"), ("FledgeITLp95High", "m/2"),
            ("FledgeModelNoTraffic", "idle/1")}


def firing(prometheus: str) -> set[tuple[str, str]]:
    alerts = httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
    return {(a["labels"]["alertname"], a["labels"].get("version", "")) for a in alerts if a["state"] == "firing"}


def instant(prometheus: str, expr: str) -> list[dict]:
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", f"Prometheus refused {expr!r}: {body.get('error')}"
    return body["data"]["result"]


class Users:
    """Threads sending streamed completions for `m` through the gateway until stopped."""

    def __init__(self, url: str, threads: int = 6):
        self.url, self._stop = url, threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.sent = 0

    def _run(self):
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                with client.stream("POST", f"{self.url}/v1/completions",
                                   json={"model": "m", "prompt": "hi", "max_tokens": 4, "stream": True}) as response:
                    for _ in response.iter_bytes():
                        pass
                self.sent += 1

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


@pytest.fixture()
def monitored_gateway(stack, tmp_path):
    # Ejection would take the bad version out of the split within three failures; the alerts
    # are about what Prometheus sees of a version that keeps serving, so it is turned off here.
    settings = load_policy().serving.gateway.model_copy(update={"eject_after_failures": 1_000_000})
    prometheus = stack.url("prometheus")
    healthy = ScriptedBackend("m-1", Script(tokens=6, token_gap_s=0.01)).__enter__()
    bad = ScriptedBackend("m-2", Script(error_rate=0.4, delay_s=2.5, tokens=3, token_gap_s=0.7, seed=7)).__enter__()
    idle = ScriptedBackend("idle-1").__enter__()
    targets = stack.layout.targets / TARGETS_FILE
    with BackgroundGateway(build_gateway(tmp_path, settings)) as server:
        admin = GatewayAdmin(server.url, (tmp_path / "gateway-admin-token").read_text())
        admin.add_backend("m", Backend(version="m/1", base_url=healthy.base_url, role="stable"))
        admin.add_backend("m", Backend(version="m/2", base_url=bad.base_url, role="canary"))
        admin.set_weights({"m/1": 50, "m/2": 50})
        admin.add_backend("idle", Backend(version="idle/1", base_url=idle.base_url, role="stable"))
        targets.write_text(json.dumps(scrape_targets(server.url, []), indent=2))
        install_alert_rules(stack.layout.rules, render(AlertSettings.fast()))
        reload(prometheus, "the fast rules", stack.layout.home.root)
        try:
            yield server, prometheus
        finally:
            targets.unlink(missing_ok=True)
            install_alert_rules(stack.layout.rules, render())
            reload(prometheus, "the production rules", stack.layout.home.root)
            for backend in (healthy, bad, idle):
                backend.close()


def test_the_alerts_fire_on_the_live_prometheus_for_the_bad_version_only(monitored_gateway):
    server, prometheus = monitored_gateway
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert {r["name"] for g in rules for r in g["rules"]} >= {name for name, _ in EXPECTED}
    seen: set = set()
    with Users(server.url) as users:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not EXPECTED <= seen:
            time.sleep(2)
            seen = firing(prometheus)
    assert EXPECTED <= seen, f"firing after {users.sent} requests: {sorted(seen)}"
    assert not {alert for alert in seen if alert[1] == "m/1"}, f"the healthy version alerted: {sorted(seen)}"
    alert = next(a for a in httpx.get(f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
                 if a["labels"]["alertname"] == "FledgeVersionErrorRate")
    assert alert["labels"]["severity"] == "page" and "m m/2" in alert["annotations"]["summary"]


def test_every_dashboard_panel_query_returns_series_from_the_live_prometheus(monitored_gateway):
    server, prometheus = monitored_gateway
    with Users(server.url):
        time.sleep(20)  # a few scrapes with traffic in every series
        queries = panel_queries(build())
        assert len(queries) >= 6
        empty = [(title, expr) for title, expr in queries
                 if not instant(prometheus, concrete(expr, models="m|idle"))]
    assert not empty, f"panels without series: {empty}"
    weights = {s["metric"]["version"]: float(s["value"][1]) for s in
               instant(prometheus, concrete(dict(queries)["Canary weight over time"], models="m"))}
    assert weights == {"m/1": 50.0, "m/2": 50.0}
