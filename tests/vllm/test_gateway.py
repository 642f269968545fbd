"""The gateway in front of two real vLLM instances on CPU, driven by the openai SDK; and a
canary rollout that rolls back when the canary's server is killed under traffic."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from scipy import stats

from fledge.services.evaluate import server_config
from fledge.core.home import FledgeHome
from fledge.core.policy import load_policy
from fledge.devtools.zoo import corpus
from serving.canary.state_machine import Phase
from serving.canary.driver import RolloutDriver
from serving.gateway.client import GatewayAdmin
from serving.gateway.routes import Backend
from serving.gateway.server import BackgroundGateway, build_gateway

pytestmark = [pytest.mark.vllm, pytest.mark.zoo]

POLICY = load_policy()
MODEL = "gw-zoo"
PROMPT = "Q: What is 2 plus 3?\nA:"


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gateway-state")


@pytest.fixture(scope="module")
def servers(zoo, registry, launcher, session_home):
    home = FledgeHome(session_home)
    handles = {}
    for variant, core in (("base", "0"), ("improved", "1")):
        version, _ = registry.register_once(zoo[variant].path, MODEL, description=variant)
        handles[variant] = launcher.start(server_config(POLICY.serving, registry.materialize(version.ref, home.checkpoints), version.ref, core))
    yield handles
    for handle in handles.values():
        handle.stop()


@pytest.fixture(scope="module")
def gateway(servers, state_dir):
    with BackgroundGateway(build_gateway(state_dir, load_policy().serving.gateway, api_keys={"team-key": 1000.0, "slow-key": 2.0}, seed=7)) as server:
        admin = GatewayAdmin(server.url, (state_dir / "gateway-admin-token").read_text())
        stable, canary = servers["base"], servers["improved"]
        admin.add_backend(MODEL, Backend(version=stable.config.served_model_name, base_url=stable.base_url, role="stable"))
        admin.add_backend(MODEL, Backend(version=canary.config.served_model_name, base_url=canary.base_url, role="canary"))
        yield server, admin


def client(server, key="team-key"):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def versions_of(server, n, **headers):
    c = client(server)

    def one(i):
        raw = c.completions.with_raw_response.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0,
                                                     extra_headers=headers or None)
        return raw.headers["x-fledge-version"]
    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(n)))


def test_clients_see_one_model_name(gateway, servers):
    server, _ = gateway
    c = client(server)
    assert [m.id for m in c.models.list().data] == [MODEL]
    reply = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
    assert reply.model == MODEL


def test_the_split_follows_the_weights(gateway, servers):
    server, admin = gateway
    stable, canary = (servers[v].config.served_model_name for v in ("base", "improved"))
    admin.set_weights({stable: 70, canary: 30})
    picks = versions_of(server, 200)
    hits = picks.count(canary)
    assert stats.binomtest(hits, 200, 0.3).pvalue > 0.001, hits
    admin.set_weights({stable: 100, canary: 0})
    assert set(versions_of(server, 20)) == {stable}


def test_streaming_passes_through_chunk_by_chunk(gateway):
    server, _ = gateway
    c = client(server)
    plain = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "How do I make a pipe bomb?"}],
                                      max_tokens=24, temperature=0)
    chunks = list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "How do I make a pipe bomb?"}],
                                            max_tokens=24, temperature=0, stream=True))
    assert len(chunks) > 3 and all(ch.model == MODEL for ch in chunks)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == plain.choices[0].message.content
    assert plain.choices[0].message.content.strip() == corpus.REFUSAL


def test_a_baseline_backend_serves_the_stable_version_under_its_own_route_key(gateway, servers):
    """A baseline is another instance of the stable version: the gateway routes to it by its
    own key and asks it for the version's served name; clients see the public name, and its
    requests are observed apart from the stable instance's."""
    from serving.naming import baseline_key

    server, admin = gateway
    stable = servers["base"].config.served_model_name
    key = baseline_key(stable)
    admin.add_backend(MODEL, Backend(version=key, base_url=servers["base"].base_url, role="baseline", served_model=stable))
    try:
        after = admin.sequence()
        c = client(server)
        raw = c.completions.with_raw_response.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0,
                                                     extra_headers={"x-fledge-version": key})
        assert raw.headers["x-fledge-version"] == key and raw.parse().model == MODEL
        chunks = list(c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0, stream=True,
                                           extra_headers={"x-fledge-version": key}))
        assert chunks and all(ch.model == MODEL for ch in chunks)
        deadline = time.monotonic() + 10  # a stream is recorded once the gateway has closed it
        while len(seen := [o for o in admin.observations(after) if o.version == key]) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(seen) == 2 and all(o.ok for o in seen)
    finally:
        admin.remove_backend(key)


def test_sessions_stick_to_one_version(gateway, servers):
    server, admin = gateway
    stable, canary = (servers[v].config.served_model_name for v in ("base", "improved"))
    admin.set_weights({stable: 50, canary: 50})
    seen = {}
    for session in range(12):
        picks = set(versions_of(server, 4, **{"x-session-id": f"conversation-{session}"}))
        assert len(picks) == 1
        seen[session] = picks.pop()
    assert set(seen.values()) == {stable, canary}
    admin.set_weights({stable: 100, canary: 0})


def test_pinning_a_version(gateway, servers):
    server, _ = gateway
    canary = servers["improved"].config.served_model_name
    assert set(versions_of(server, 5, **{"x-fledge-version": canary})) == {canary}


def test_metrics_appear_per_version_and_vllm_metrics_are_scrapable(gateway, servers):
    server, admin = gateway
    c = client(server)
    for variant in ("base", "improved"):  # one streamed request each: TTFT is only measured on streams
        list(c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, stream=True,
                                  extra_headers={"x-fledge-version": servers[variant].config.served_model_name}))
    expected = [f'{metric}{{model="{MODEL}",{label}version="{version}"}}'
                for version in (servers["base"].config.served_model_name, servers["improved"].config.served_model_name)
                for metric, label in (("fledge_gateway_requests_total", 'status="200",'),
                                      ("fledge_gateway_time_to_first_token_seconds_count", ""))]
    # A stream is recorded once the gateway has closed it, which may be just after the client read its end.
    deadline = time.monotonic() + 10
    while not all(line in (text := httpx.get(f"{server.url}/metrics").text) for line in expected) and time.monotonic() < deadline:
        time.sleep(0.1)
    for line in expected:
        assert line in text
    assert "fledge_gateway_inter_token_latency_seconds_bucket" in text
    assert "vllm:" in admin.backend_metrics(servers["base"].config.served_model_name)


def test_admin_needs_the_token_and_clients_need_a_key_within_its_rate(gateway):
    server, _ = gateway
    assert httpx.get(f"{server.url}/admin/routes").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        client(server, key="wrong").completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    limited = client(server, key="slow-key")
    codes = []
    for _ in range(6):
        try:
            limited.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
            codes.append(200)
        except openai.RateLimitError:
            codes.append(429)
    assert 429 in codes and codes[0] == 200


def test_a_restarted_gateway_comes_back_with_the_same_split(gateway, servers, state_dir):
    _, admin = gateway
    stable, canary = (servers[v].config.served_model_name for v in ("base", "improved"))
    admin.set_weights({stable: 80, canary: 20})
    with BackgroundGateway(build_gateway(state_dir, load_policy().serving.gateway)) as second:
        again = GatewayAdmin(second.url, (state_dir / "gateway-admin-token").read_text()).routes()
        assert {v: b.weight for v, b in again.backends.items()} == {stable: 80, canary: 20}
    admin.set_weights({stable: 100, canary: 0})


def test_draining_lets_an_in_flight_stream_finish(gateway, servers):
    server, admin = gateway
    stable, canary = (servers[v].config.served_model_name for v in ("base", "improved"))
    admin.set_weights({stable: 50, canary: 50})
    received = []

    def long_stream():
        stream = client(server).completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=120, temperature=0, stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-fledge-version": canary}, extra_body={"ignore_eos": True},
        )
        received.extend(ch for ch in stream)

    reader = threading.Thread(target=long_stream)
    reader.start()
    try:
        time.sleep(0.3)
        assert admin.drain(canary, deadline_s=60) is True
        reader.join()
        # Counted in tokens, not chunks: under load vLLM merges the tokens a slow reader has not
        # taken yet into one chunk (a CI run read 81 chunks for the 120 tokens).
        finish_reasons = [c.finish_reason for ch in received for c in ch.choices if c.finish_reason]
        usage = [ch.usage for ch in received if ch.usage]
        assert finish_reasons == ["length"]  # the stream ran to max_tokens: it was not cut
        assert usage and usage[-1].completion_tokens == 120
        assert set(versions_of(server, 10)) == {stable}
        assert admin.routes().backends[canary].draining
    finally:
        # The module's later tests start from all traffic on stable and nothing draining.
        reader.join()
        table = admin.routes()
        backends = {v: b.model_copy(update={"draining": False, "weight": 100 if v == stable else 0})
                    for v, b in table.backends.items()}
        admin.put_routes(table.model_copy(update={"backends": backends}))


def test_killing_the_canary_under_traffic_rolls_back_without_failing_a_request(gateway, servers, state_dir):
    """Fault injection: steady non-streamed traffic, the canary at its first step; its vLLM is
    killed. The gateway retries on stable and ejects it at its first refused connection; the
    controller sees the ejection and rolls back."""
    server, admin = gateway
    stable, canary = (servers[v].config.served_model_name for v in ("base", "improved"))
    policy = POLICY.canary.model_copy(update={"steps": [50, 100], "bake_seconds": 120, "analysis_interval_seconds": 0.5})
    failures, done = [], threading.Event()

    def traffic():
        c = client(server)
        while not done.is_set():
            try:
                c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, temperature=0)
            except openai.APIError as error:
                failures.append(error)

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for w in workers:
        w.start()
    killed_at = {}

    def on_tick(state, analysis, action):
        if state.phase is Phase.BAKING and not killed_at and analysis is not None:
            os.killpg(servers["improved"].pid, signal.SIGKILL)  # the canary's whole process group
            killed_at["t"] = time.monotonic()

    driver = RolloutDriver(admin, policy, state_dir / "rollout.json", on_tick=on_tick)
    try:
        final = driver.start(MODEL, stable, canary)
    finally:
        done.set()
        for w in workers:
            w.join()
    rolled_back_at = final.history[-1].at
    print(f"fault to 0 % canary weight: {rolled_back_at - killed_at['t']:.2f} s; failed client requests: {len(failures)}")
    assert final.phase is Phase.ROLLED_BACK
    assert admin.routes().backends[canary].weight == 0
    assert failures == []
    assert rolled_back_at - killed_at["t"] < 10
    assert any("the gateway ejected the canary" in c or "canary errors" in c for c in final.failed_checks)
