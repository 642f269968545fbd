"""Mirrored traffic through the gateway over real HTTP on loopback, with scripted backends: the
client only ever gets its own backend's answer, mirrors never hold it up, mirrored load stays
within its bound, and probes reach the pair only."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest
from support.backend import Script, ScriptedBackend

from fledge.core.policy import load_policy
from serving.gateway.client import GatewayAdmin, GatewayAdminError
from serving.gateway.routes import Backend
from serving.gateway.server import BackgroundGateway, build_gateway


def says(name):
    return lambda body: f"{name} answers {str(body.get('prompt'))[:20]}"


@pytest.fixture()
def plane(tmp_path):
    """A gateway with stable m/1 (all traffic), candidate m/2 and baseline m/1-baseline at 0 %."""
    scripts = {key: Script(answer=says(key.upper())) for key in ("stable", "candidate", "baseline")}
    backends = {key: ScriptedBackend(key, script).__enter__() for key, script in scripts.items()}
    with BackgroundGateway(build_gateway(tmp_path, load_policy().serving.gateway, seed=1)) as server:
        admin = GatewayAdmin(server.url, (tmp_path / "gateway-admin-token").read_text()).for_model("m")
        admin.add_backend("m", Backend(version="m/1", base_url=backends["stable"].base_url, role="stable"))
        admin.add_backend("m", Backend(version="m/2", base_url=backends["candidate"].base_url, role="canary"))
        admin.add_backend("m", Backend(version="m/1-baseline", base_url=backends["baseline"].base_url,
                                       role="baseline", served_model="m/1"))
        yield server, admin, scripts
    for backend in backends.values():
        backend.close()


def wait_for_pairs(admin, count, timeout_s=10.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        pairs = admin.pairs()
        if len(pairs) >= count:
            return pairs
        time.sleep(0.05)
    return admin.pairs()


def test_clients_get_only_their_backends_answers_while_both_sides_answer_the_mirror(plane):
    server, admin, scripts = plane
    admin.set_mirror(candidate="m/2", baseline="m/1-baseline", share=1.0, max_in_flight=4)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="-", max_retries=0)
    answers = []
    for i in range(12):
        if i % 2:
            stream = client.completions.create(model="m", prompt=f"question {i}", max_tokens=4, temperature=0.0, stream=True)
            answers.append("".join(chunk.choices[0].text for chunk in stream if chunk.choices))
        else:
            answers.append(client.completions.create(model="m", prompt=f"question {i}", max_tokens=4).choices[0].text)
        time.sleep(0.05)  # one at a time: every request finds a free mirror slot
    assert all(a.startswith("STABLE answers question") for a in answers)  # never a mirrored answer
    pairs = wait_for_pairs(admin, 12)
    assert len(pairs) == 12
    for pair in pairs:
        assert pair["baseline"]["text"].startswith("BASELINE answers question")
        assert pair["candidate"]["text"].startswith("CANDIDATE answers question")
        assert pair["baseline"]["version"] == "m/1-baseline" and pair["candidate"]["version"] == "m/2"
    # The mirrors asked for whole answers, under each backend's served name; the streamed ones were deterministic.
    assert {b["stream"] for b in scripts["candidate"].received} == {False}
    assert {b["model"] for b in scripts["baseline"].received} == {"m/1"}
    assert sum(p["deterministic"] for p in pairs) == 6
    # Mirrored answers are no observations: the users' figures hold the stable version only.
    assert {o.version for o in admin.observations()} == {"m/1"}


def test_a_busy_mirror_never_holds_up_the_client_and_extra_requests_are_not_mirrored(plane):
    server, admin, scripts = plane
    scripts["candidate"].hold = threading.Event()  # the candidate answers nothing until released
    admin.set_mirror(candidate="m/2", baseline="m/1-baseline", share=1.0, max_in_flight=1)
    for i in range(8):
        response = httpx.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": f"q{i}"}, timeout=10)
        assert response.status_code == 200 and response.json()["choices"][0]["text"].startswith("STABLE")
    # Every client answer came back while the first mirrored request still waited on the candidate.
    assert len(scripts["candidate"].received) == 1 and admin.pairs() == []
    state = admin.mirror()
    assert (state["mirrored"], state["dropped"]) == (1, 7)
    assert 'fledge_gateway_mirrored_requests_total{model="m",outcome="dropped"} 7.0' in httpx.get(f"{server.url}/metrics").text
    scripts["candidate"].hold.set()
    assert len(wait_for_pairs(admin, 1)) == 1


def test_a_mirror_is_dropped_while_either_sides_server_has_requests_waiting(plane):
    server, admin, scripts = plane
    scripts["baseline"].waiting = 3  # vLLM's queue gauge: users' requests wait for a batch slot there
    scripts["candidate"].waiting = 0
    admin.set_mirror(candidate="m/2", baseline="m/1-baseline", share=1.0, max_in_flight=4)
    time.sleep(0.6)  # a reading of both queues
    for i in range(6):
        assert httpx.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": f"q{i}"}, timeout=10).status_code == 200
    # Probes wait for the queue too: "busy, send it again".
    assert admin.probe({"prompt": "Q: 2 plus 2?\nA:", "max_tokens": 2}, probe={"id": "t", "kind": "task"}) is None
    state = admin.mirror()
    assert (state["mirrored"], state["dropped"], state["dropped_queued"]) == (0, 7, 7)  # six requests, the probe
    assert scripts["candidate"].received == [] and scripts["baseline"].received == []
    assert 'outcome="dropped_queued"} 6.0' in httpx.get(f"{server.url}/metrics").text
    scripts["baseline"].waiting = 0  # the queue drained: mirroring resumes
    time.sleep(0.6)
    httpx.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": "after"}, timeout=10)
    assert len(wait_for_pairs(admin, 1)) == 1


def test_mirrored_requests_max_tokens_is_capped_on_both_sides(plane):
    server, admin, scripts = plane
    admin.set_mirror(candidate="m/2", baseline="m/1-baseline", share=1.0, max_tokens=16)
    httpx.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": "long", "max_tokens": 4000}, timeout=10)
    httpx.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": "short", "max_tokens": 5}, timeout=10)
    wait_for_pairs(admin, 2)
    assert [b["max_tokens"] for b in scripts["stable"].received] == [4000, 5]  # the user's own request untouched
    for side in ("candidate", "baseline"):
        assert sorted(b["max_tokens"] for b in scripts[side].received) == [5, 16]


def test_pinned_requests_and_unmirrored_models_are_not_mirrored(plane):
    server, admin, scripts = plane
    httpx.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": "before"}, timeout=10)
    admin.set_mirror(candidate="m/2", baseline="m/1-baseline", share=1.0)
    httpx.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": "pinned"},
               headers={"x-fledge-version": "m/1"}, timeout=10)
    admin.clear_mirror()
    httpx.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": "after"}, timeout=10)
    time.sleep(0.3)
    assert scripts["candidate"].received == [] and admin.pairs() == []


def test_a_probe_goes_to_the_pair_only_and_never_into_the_users_figures(plane):
    server, admin, scripts = plane
    admin.set_mirror(candidate="m/2", baseline="m/1-baseline", share=0.0)
    before = admin.sequence()
    pair = admin.probe({"prompt": "Q: What is 2 plus 2?\nA:", "max_tokens": 4, "temperature": 0.0},
                       probe={"id": "task-1", "kind": "task", "expected": "4"})
    assert pair["probe"] == {"id": "task-1", "kind": "task", "expected": "4"}
    assert pair["candidate"]["text"].startswith("CANDIDATE") and pair["baseline"]["text"].startswith("BASELINE")
    assert scripts["stable"].received == []  # the users' version served nothing
    assert admin.sequence() == before and admin.observations(after=before) == []
    assert [p["seq"] for p in admin.pairs()] == [pair["seq"]]
    assert not any("/admin/probe" in entry["action"] for entry in admin.audit())  # probes are not audited changes


def test_mirroring_to_a_version_the_model_does_not_have_is_refused_naming_it(plane):
    _, admin, _ = plane
    with pytest.raises(GatewayAdminError, match="cannot mirror to m/9: not a backend of m"):
        admin.set_mirror(candidate="m/9", baseline="m/1-baseline", share=0.5)
    with pytest.raises(GatewayAdminError, match="has no mirror"):
        admin.probe({"prompt": "x"}, probe={"id": "p", "kind": "task"})
