"""The gateway over real HTTP on loopback, without model servers: admin API, auth, refusals,
and the retry path when a backend refuses connections. Backends are scripted servers
(tests/support/backend.py): the gateway gives a share only to a backend that answers /health."""

from __future__ import annotations

import httpx
import pytest
from support.backend import ScriptedBackend

from fledge.core.policy import load_policy
from serving.gateway.client import GatewayAdmin, GatewayAdminError
from serving.gateway.routes import Backend
from serving.gateway.server import BackgroundGateway, build_gateway


@pytest.fixture(scope="module")
def urls():
    """Three live backends' URLs, shared by the module's tests (only their /health is used)."""
    servers = [ScriptedBackend(f"b{i}").__enter__() for i in range(3)]
    yield [server.base_url for server in servers]
    for server in servers:
        server.close()


@pytest.fixture()
def gateway(tmp_path):
    with BackgroundGateway(build_gateway(tmp_path, load_policy().serving.gateway)) as server:
        yield server, GatewayAdmin(server.url, (tmp_path / "gateway-admin-token").read_text()), tmp_path


def test_without_routes_the_gateway_is_not_ready_and_says_why(gateway):
    server, _, _ = gateway
    assert httpx.get(f"{server.url}/health").status_code == 503
    response = httpx.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": "hi"})
    assert response.status_code == 503 and "admin API" in response.json()["error"]["message"]


def test_the_admin_api_needs_its_token(gateway):
    server, _, _ = gateway
    assert httpx.get(f"{server.url}/admin/routes").status_code == 401
    assert httpx.get(f"{server.url}/admin/routes", headers={"authorization": "Bearer nope"}).status_code == 401


def test_weights_are_validated_and_persisted(gateway, urls):
    server, admin, state = gateway
    admin.add_backend("m", Backend(version="m/1", base_url=urls[0], role="stable"))
    admin.add_backend("m", Backend(version="m/2", base_url=urls[1], role="canary"))
    assert {v: b.weight for v, b in admin.routes().backends.items()} == {"m/1": 100, "m/2": 0}
    with pytest.raises(GatewayAdminError, match="add up to 100"):
        admin.set_weights({"m/1": 90, "m/2": 20})
    with pytest.raises(GatewayAdminError, match="unknown version"):
        admin.set_weights({"m/9": 100})
    admin.set_weights({"m/1": 75, "m/2": 25})
    assert '"weight": 25' in (state / "gateway-routes.json").read_text()
    with pytest.raises(GatewayAdminError, match="drain it first"):
        admin.remove_backend("m/2")


def test_a_wrong_model_name_is_a_404_naming_the_right_one(gateway, urls):
    server, admin, _ = gateway
    admin.add_backend("m", Backend(version="m/1", base_url=urls[0], role="stable"))
    response = httpx.post(f"{server.url}/v1/completions", json={"model": "other", "prompt": "hi"})
    assert response.status_code == 404 and "'m'" in response.json()["error"]["message"]


def test_when_every_backend_refuses_the_client_gets_a_502_naming_them(gateway):
    server, admin, _ = gateway
    with ScriptedBackend("one") as one, ScriptedBackend("two") as two:
        admin.add_backend("m", Backend(version="m/1", base_url=one.base_url, role="stable"))
        admin.add_backend("m", Backend(version="m/2", base_url=two.base_url, role="canary"))
        admin.set_weights({"m/1": 0, "m/2": 100})
    # Both stopped listening after they were given their shares: connections are refused.
    response = httpx.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": "hi"}, timeout=30)
    assert response.status_code == 502
    assert "m/2 and m/1 failed" in response.json()["error"]["message"]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'fledge_gateway_retries_total{model="m",reason="ConnectError",version="m/2"} 1.0' in metrics


def test_a_restarted_driver_restores_the_saved_split_then_rolls_back_without_data(gateway, urls):
    """The driver died at 25 %; meanwhile someone set 60/40 by hand. Resuming re-applies the
    saved 25 % first; with no traffic every window is inconclusive, and after the policy's
    limit the canary is rolled back: no data is never a pass."""
    import time

    from serving.canary.state_machine import Phase, RolloutState
    from serving.canary.driver import RolloutDriver, save_state

    server, admin, state_dir = gateway
    admin.add_backend("m", Backend(version="m/1", base_url=urls[0], role="stable"))
    admin.add_backend("m", Backend(version="m/2", base_url=urls[1], role="canary"))
    admin.set_weights({"m/1": 60, "m/2": 40})
    policy = load_policy().canary.model_copy(update={"analysis_interval_seconds": 0.01, "max_inconclusive_windows": 3})
    path = state_dir / "rollout.json"
    save_state(RolloutState(model="m", stable="m/1", canary="m/2", phase=Phase.BAKING, step=1, canary_weight=25,
                            step_started_at=time.monotonic() - policy.bake_seconds - 1), path)
    weights_seen = []
    driver = RolloutDriver(admin, policy, path,
                           on_tick=lambda *_: weights_seen.append(admin.routes().backends["m/2"].weight))
    final = driver.resume()
    assert weights_seen[0] == 25
    assert final.phase is Phase.ROLLED_BACK
    assert "no data is never a pass" in final.history[-1].reason
    assert {v: b.weight for v, b in admin.routes().backends.items()} == {"m/1": 100, "m/2": 0}


def _latencies(version: str, ttft_s: float, n: int) -> list:
    import random
    import time

    from serving.gateway.metrics import Observation

    rng = random.Random(version)
    return [Observation(time.time(), version, True, 200, ttft_s * rng.uniform(0.9, 1.1), ttft_s * 3 * rng.uniform(0.9, 1.1),
                        3, ttft_s) for _ in range(n)]


@pytest.mark.parametrize("with_baseline", [True, False], ids=["baseline", "no-baseline"])
def test_the_canary_is_judged_against_its_baseline_when_it_has_one(gateway, with_baseline, urls):
    """The long-serving stable instance answers in 10 ms; the canary and a baseline of the
    stable version, started with it, both in 30 ms (what a fresh instance under load showed).
    Against the baseline the canary is as fast as its version's peer and is promoted, the
    baseline drained; against the stable instance it would be rolled back."""
    from serving.canary.state_machine import Phase
    from serving.canary.driver import RolloutDriver
    from serving.naming import baseline_key

    server, admin, state_dir = gateway
    admin.add_backend("m", Backend(version="m/1", base_url=urls[0], role="stable"))
    admin.add_backend("m", Backend(version="m/2", base_url=urls[1], role="canary"))
    baseline = baseline_key("m/1") if with_baseline else None
    if baseline:
        admin.add_backend("m", Backend(version=baseline, base_url=urls[2], role="baseline", served_model="m/1"))
    policy = load_policy().canary.model_copy(update={"steps": [25, 100], "bake_seconds": 0.3, "analysis_interval_seconds": 0.05})
    splits = []

    def traffic(state, analysis, action):
        if action.kind.value == "set_weight":  # the step's window fills at once
            splits.append({v: b.weight for v, b in admin.routes().backends.items()})
            for version, ttft in (("m/1", 0.010), ("m/2", 0.030), ("m/1+baseline", 0.030)):
                for obs in _latencies(version, ttft, 40):
                    server.gateway.metrics.record("m", obs, [])

    final = RolloutDriver(admin, policy, state_dir / "rollout.json", on_tick=traffic).start("m", "m/1", "m/2", baseline)
    table = admin.routes().backends
    if with_baseline:
        assert splits == [{"m/1": 50, "m/2": 25, "m/1+baseline": 25}]
        assert final.phase is Phase.PROMOTED
        assert (table["m/2"].role, table["m/2"].weight) == ("stable", 100)
        assert table["m/1+baseline"].draining and table["m/1+baseline"].weight == 0
    else:
        assert splits == [{"m/1": 75, "m/2": 25}]
        assert final.phase is Phase.ROLLED_BACK
        assert "time to first token" in " ".join(final.failed_checks)
        assert {v: b.weight for v, b in table.items()} == {"m/1": 100, "m/2": 0}


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b"\xff\xfe"], ids=["text", "list", "not-utf8"])
def test_a_malformed_body_is_a_400_not_a_crash(gateway, content, urls):
    server, admin, _ = gateway
    admin.add_backend("m", Backend(version="m/1", base_url=urls[0], role="stable"))
    response = httpx.post(f"{server.url}/v1/completions", content=content, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]["message"]
