"""The gateway under abuse and faults, over real HTTP on loopback, with scripted backends
(tests/support/backend.py) where a backend must fail on demand: limits, the concurrency cap,
pools per backend, the retry budget, outlier ejection, the audit log, and a 10 %-failing
canary rolled back by the rollout driver."""

from __future__ import annotations

import json
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from support.backend import Script, ScriptedBackend

from fledge.core.policy import load_policy
from serving.canary.state_machine import Phase
from serving.canary.driver import RolloutDriver
from serving.gateway.client import GatewayAdmin, GatewayAdminError
from serving.gateway.routes import Backend
from serving.gateway.server import BackgroundGateway, build_gateway

LIMITS = load_policy().serving.gateway
HTTP = httpx.Client(timeout=30)  # one client: making one loads the CA bundle (~0.1 s a request otherwise)


@pytest.fixture()
def start_gateway(tmp_path):
    started = []

    def start(**limits):
        gateway = BackgroundGateway(build_gateway(tmp_path, LIMITS.model_copy(update=limits))).start()
        started.append(gateway)
        return gateway, GatewayAdmin(gateway.url, (tmp_path / "gateway-admin-token").read_text())

    yield start
    for gateway in started:
        gateway.stop()


def route(admin, stable: ScriptedBackend, canary: ScriptedBackend | None = None, canary_weight: int = 0) -> None:
    admin.add_backend("m", Backend(version="m/1", base_url=stable.base_url, role="stable"))
    if canary:
        admin.add_backend("m", Backend(version="m/2", base_url=canary.base_url, role="canary"))
        admin.set_weights({"m/1": 100 - canary_weight, "m/2": canary_weight})


def complete(url: str, **body) -> httpx.Response:
    return HTTP.post(f"{url}/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 4, **body})


def test_oversized_deep_and_ill_typed_requests_are_refused_by_the_gateway_and_count_for_no_version(start_gateway):
    gateway, admin = start_gateway(max_body_bytes=4096, max_json_depth=8)
    with ScriptedBackend("stable") as stable:
        route(admin, stable)
        before = admin.sequence()
        big = HTTP.post(f"{gateway.url}/v1/completions", content=b'{"prompt": "' + b"x" * 8192 + b'"}', timeout=10)
        assert big.status_code == 413 and "4096 bytes" in big.json()["error"]["message"]
        deep = HTTP.post(f"{gateway.url}/v1/completions", content=b'{"prompt": ' + b"[" * 1500 + b"]" * 1500 + b"}",
                          timeout=10)
        assert deep.status_code == 400 and "nested" in deep.json()["error"]["message"]
        nested = complete(gateway.url, prompt=[[[[[[[[["x"]]]]]]]]])
        assert nested.status_code == 400 and "8 levels" in nested.json()["error"]["message"]
        ill_typed = complete(gateway.url, stream="false")
        assert ill_typed.status_code == 400 and "'stream' must be true or false" in ill_typed.json()["error"]["message"]
        assert admin.sequence() == before  # nothing reached a version, nothing was recorded against one
        assert stable.script.served == 0
        assert complete(gateway.url).status_code == 200  # and the gateway still serves


def test_over_the_concurrency_limit_the_answer_is_503_with_retry_after(start_gateway):
    gateway, admin = start_gateway(max_concurrency=2)
    with ScriptedBackend("slow", Script(delay_s=1.0)) as slow:
        route(admin, slow)
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: complete(gateway.url), range(3)))
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200, 200, 503]
        refused = next(a for a in answers if a.status_code == 503)
        assert refused.headers["retry-after"] == "1"
        assert complete(gateway.url).status_code == 200  # the slots are given back


def test_a_full_pool_is_the_gateways_saturation_not_the_backends_error(start_gateway):
    gateway, admin = start_gateway(connections_per_backend=1)
    with ScriptedBackend("slow", Script(delay_s=2.5)) as slow, ScriptedBackend("fast") as fast:
        route(admin, slow)
        admin.add_backend("m", Backend(version="m/2", base_url=fast.base_url, role="canary"))
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(complete, gateway.url)
            time.sleep(0.3)
            second = pool.submit(complete, gateway.url)
            # The other backend has its own pool: it answers while m/1's is full.
            pinned = HTTP.post(f"{gateway.url}/v1/completions", json={"model": "m", "prompt": "hi"},
                                headers={"x-fledge-version": "m/2"}, timeout=10)
            assert pinned.status_code == 200
            assert second.result().status_code == 503 and "all in use" in second.result().json()["error"]["message"]
            assert first.result().status_code == 200
        recorded = [o for o in admin.observations() if o.version == "m/1"]
        assert len(recorded) == 1 and recorded[0].ok  # the refused one is nobody's error
        assert admin.ejected() == {}


def test_a_backend_failing_in_a_row_is_ejected_and_its_share_goes_to_stable(start_gateway):
    gateway, admin = start_gateway(eject_after_failures=3, ejection_seconds=30)
    with ScriptedBackend("stable") as stable, ScriptedBackend("broken", Script(error_rate=1.0)) as broken:
        route(admin, stable, broken, canary_weight=50)
        answers = [complete(gateway.url) for _ in range(40)]
        assert all(a.status_code == 200 for a in answers)  # retried on stable before the first byte
        assert broken.script.served == 3  # ejected after its third failure in a row
        assert "3 failed requests in a row" in admin.ejected()["m/2"]
        assert admin.effective_weights() == {"m/1": 100.0, "m/2": 0.0}
        assert admin.routes().backends["m/2"].weight == 50  # the controller decides; the table is its


def test_a_refused_connection_ejects_at_once(start_gateway):
    gateway, admin = start_gateway()
    with ScriptedBackend("stable") as stable:
        route(admin, stable)
        with ScriptedBackend("gone") as gone:
            admin.add_backend("m", Backend(version="m/2", base_url=gone.base_url, role="canary"))
            admin.set_weights({"m/1": 50, "m/2": 50})
        # m/2 has stopped listening: its connections are refused.
        answers = [complete(gateway.url) for _ in range(20)]
        assert all(a.status_code == 200 for a in answers)
        assert "m/2" in admin.ejected()
        failures = [o for o in admin.observations() if o.version == "m/2"]
        # The kept-alive connection breaks first (not a refusal); the next connection is refused.
        assert 1 <= len(failures) <= 2 and all(o.status == 599 for o in failures)


def test_retries_stay_within_the_budget(start_gateway):
    gateway, admin = start_gateway(retry_budget=0.0, retry_reserve=0, eject_after_failures=100)
    with ScriptedBackend("stable") as stable, ScriptedBackend("broken", Script(error_rate=1.0)) as broken:
        route(admin, stable, broken, canary_weight=100)
        answer = complete(gateway.url)
        assert answer.status_code == 502 and "retry budget is spent" in answer.json()["error"]["message"]
        assert stable.script.served == 0
    gateway, admin = start_gateway(retry_budget=0.2, retry_reserve=2, eject_after_failures=100)
    with ScriptedBackend("stable") as stable, ScriptedBackend("broken", Script(error_rate=1.0)) as broken:
        admin.put_routes(admin.routes().model_copy(update={"backends": {}}).serving_only(
            "m", Backend(version="m/1", base_url=stable.base_url)))
        admin.add_backend("m", Backend(version="m/2", base_url=broken.base_url, role="canary"))
        admin.set_weights({"m/1": 0, "m/2": 100})
        statuses = [complete(gateway.url).status_code for _ in range(30)]
        retried = stable.script.served
        assert retried <= 0.2 * 30 + 2 and statuses.count(200) == retried and statuses.count(502) == 30 - retried


def test_pinned_requests_are_recorded_as_pinned(start_gateway):
    gateway, admin = start_gateway()
    with ScriptedBackend("stable") as stable:
        route(admin, stable)
        after = admin.sequence()
        HTTP.post(f"{gateway.url}/v1/completions", json={"model": "m", "prompt": "hi"},
                   headers={"x-fledge-version": "m/1"}, timeout=10)
        complete(gateway.url)
        recorded = admin.observations(after=after)
        assert [o.pinned for o in recorded] == [True, False]
        assert [o.seq for o in recorded] == [after + 1, after + 2]


def test_every_admin_change_is_audited_and_the_secrets_are_0600(start_gateway, tmp_path):
    gateway, admin = start_gateway()
    with ScriptedBackend("stable") as stable, ScriptedBackend("canary") as canary:
        route(admin, stable, canary, canary_weight=25)
        entries = admin.audit()
        assert [e["action"] for e in entries] == ["POST /admin/backends", "POST /admin/backends", "POST /admin/weights"]
        last = entries[-1]
        assert last["before"]["backends"]["m/2"]["weight"] == 0 and last["after"]["backends"]["m/2"]["weight"] == 25
        token = (tmp_path / "gateway-admin-token").read_text()
        assert last["token_id"].startswith("sha256:") and token not in json.dumps(entries)
        assert admin.audit(after=last["seq"] - 1) == [last]
    for secret in ("gateway-admin-token", "gateway-audit.jsonl"):
        assert stat.S_IMODE((tmp_path / secret).stat().st_mode) == 0o600


def test_a_canary_failing_ten_percent_is_rolled_back_before_it_serves_150_requests(start_gateway, tmp_path):
    """Users at ~20 requests a second, a look every 0.25 s: per look and per bake the canary
    sees what the demo's ~4 a second and 2 s looks give it (~30 requests in its bake)."""
    gateway, admin = start_gateway(eject_after_failures=100)  # the analysis, not the ejection, is under test
    policy = load_policy().canary.model_copy(update={
        "steps": [50, 100], "bake_seconds": 3.0, "analysis_interval_seconds": 0.25, "max_inconclusive_windows": 10,
        "progress_deadline_seconds": 15.0, "baseline_instance": False})
    with ScriptedBackend("stable") as stable, ScriptedBackend("flaky", Script(error_rate=0.10, seed=3)) as flaky:
        route(admin, stable)
        admin.add_backend("m", Backend(version="m/2", base_url=flaky.base_url, role="canary"))
        done, failed = threading.Event(), []

        def users():
            with httpx.Client(timeout=10) as client:
                while not done.is_set():
                    answer = client.post(f"{gateway.url}/v1/completions", json={"model": "m", "prompt": "hi"})
                    failed.extend([answer.status_code] if answer.status_code != 200 else [])
                    time.sleep(0.05)

        user = threading.Thread(target=users)
        user.start()
        try:
            final = RolloutDriver(admin, policy, tmp_path / "rollout.json").start("m", "m/1", "m/2")
        finally:
            done.set()
            user.join()
    assert final.phase is Phase.ROLLED_BACK, final.history[-1].reason
    assert flaky.script.served < 150
    assert failed == []  # every failed canary request was retried on stable
    assert admin.routes().backends["m/2"].weight == 0


def test_a_share_is_never_given_to_a_backend_that_fails_its_health_check(start_gateway):
    gateway, admin = start_gateway()
    with ScriptedBackend("stable") as stable:
        route(admin, stable)
        with ScriptedBackend("gone") as gone:
            admin.add_backend("m", Backend(version="m/2", base_url=gone.base_url, role="canary"))
        with pytest.raises(GatewayAdminError, match="fails its health check: m/2"):
            admin.set_weights({"m/1": 50, "m/2": 50})
        assert admin.routes().backends["m/1"].weight == 100
        # Taking a share away needs no health check: the way back to stable is never refused.
        assert admin.set_weights({"m/1": 100, "m/2": 0}).backends["m/2"].weight == 0


def test_a_restore_goes_to_the_instances_serving_now_and_stable_keeps_its_traffic():
    """A snapshot taken before a release names ports that may be dead by the time it is put
    back (an instance restarted elsewhere): restored on the live URLs, dead backends dropped."""
    from serving.gateway.routes import RouteTable

    snapshot = RouteTable(model="m", backends={
        "m/1": Backend(version="m/1", base_url="http://127.0.0.1:1111/v1", role="stable", weight=75),
        "m/3": Backend(version="m/3", base_url="http://127.0.0.1:3333/v1", role="canary", weight=25)})
    restored = snapshot.restored_on({"m/1": "http://127.0.0.1:2222/v1"})
    assert {k: (b.base_url, b.weight) for k, b in restored.backends.items()} == {"m/1": ("http://127.0.0.1:2222/v1", 100)}
    with pytest.raises(Exception, match="answers its health check"):
        snapshot.restored_on({})


def test_route_changes_go_through_the_lease_and_a_preempted_holder_cannot_undo_the_rollback(start_gateway):
    from serving.gateway.leases import LeaseHeld, LeaseLost

    gateway, admin = start_gateway()
    with ScriptedBackend("stable") as stable, ScriptedBackend("canary") as canary:
        route(admin, stable, canary, canary_weight=0)
        release_lease = admin.acquire_lease("m", "release of m/2", "release", ttl_s=60)
        release = admin.fenced(release_lease)
        release.set_weights({"m/1": 50, "m/2": 50})  # the release's canary step
        with pytest.raises(LeaseHeld, match=r"m is held by release of m/2 \(release\) since"):
            admin.acquire_lease("m", "a second release", "release", ttl_s=60)
        with pytest.raises(LeaseLost, match="holds the lease on m"):
            admin.set_weights({"m/1": 100, "m/2": 0})  # nobody changes the model around its holder
        rollback = admin.fenced(admin.acquire_lease("m", "rollback by ops", "rollback", ttl_s=60, preempt=True))
        rollback.set_weights({"m/1": 100, "m/2": 0})
        with pytest.raises(LeaseLost, match="preempted by rollback by ops"):
            release.put_routes(release.routes().model_copy())  # the release's put-back
        assert admin.routes().backends["m/2"].weight == 0
        actions = [(e["action"], e.get("fence")) for e in admin.audit()]
        assert ("POST /admin/leases/acquire", None) in actions and ("POST /admin/weights", "m:2") in actions


def test_a_window_begun_before_a_gateway_restart_sees_what_the_new_gateway_records(start_gateway):
    gateway, admin = start_gateway()
    with ScriptedBackend("stable") as stable:
        route(admin, stable)
        complete(gateway.url)
        window_start = admin.sequence()
        gateway.stop()
        gateway, admin = start_gateway()  # same state directory: same routes, a new sequence
        complete(gateway.url)
        assert [o.version for o in admin.observations(after=window_start)] == ["m/1"]
