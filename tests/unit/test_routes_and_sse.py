import random

import pytest
from pydantic import ValidationError

from serving.gateway.routes import Backend, RouteTable, load_routes, save_routes
from serving.gateway.sse import EventStream


def table(stable=90, canary=10):
    return RouteTable(model="tiny", backends={
        "tiny/1": Backend(version="tiny/1", base_url="http://a/v1", role="stable", weight=stable),
        "tiny/2": Backend(version="tiny/2", base_url="http://b/v1", role="canary", weight=canary),
    })


def test_weights_must_add_up_to_100():
    with pytest.raises(ValidationError, match="add up to 100"):
        table(90, 20)


def test_the_random_split_follows_the_weights():
    rng = random.Random(1)
    picks = [table(75, 25).choose(None, rng).version for _ in range(4000)]
    assert 0.22 < picks.count("tiny/2") / len(picks) < 0.28


def test_a_session_stays_on_one_version_and_only_moves_towards_a_growing_canary():
    sessions = [f"s{i}" for i in range(500)]
    rng = random.Random(0)
    at_10 = {s: table(90, 10).choose(s, rng).version for s in sessions}
    assert all(table(90, 10).choose(s, rng).version == v for s, v in at_10.items())
    at_50 = {s: table(50, 50).choose(s, rng).version for s in sessions}
    # Sessions already on the canary stay there as its weight grows.
    assert all(at_50[s] == "tiny/2" for s, v in at_10.items() if v == "tiny/2")
    assert 0.05 < list(at_10.values()).count("tiny/2") / 500 < 0.16
    assert 0.42 < list(at_50.values()).count("tiny/2") / 500 < 0.58


def test_routes_survive_a_restart(tmp_path):
    save_routes(table(60, 40), tmp_path / "routes.json")
    assert load_routes(tmp_path / "routes.json") == table(60, 40)
    assert load_routes(tmp_path / "missing.json") is None


def test_event_stream_rewrites_the_model_name_and_counts_tokens_across_split_chunks():
    stream = EventStream("tiny/2", "tiny")
    event = b'data: {"model": "tiny/2", "choices": [{"text": " 7"}]}\n\n'
    usage = b'data: {"model":"tiny/2","choices":[],"usage":{"completion_tokens":2}}\n\ndata: [DONE]\n\n'
    out = stream.feed(event[:20]) + stream.feed(event[20:]) + stream.feed(usage) + stream.flush()
    assert b'"model": "tiny"' in out and b'"model":"tiny"' in out and b"tiny/2" not in out
    assert out.endswith(b"data: [DONE]\n\n")
    assert stream.token_chunks == 1 and stream.usage_tokens == 2


def test_the_usage_event_the_gateway_asked_for_is_taken_out_for_a_client_that_did_not():
    token = b'data: {"model":"tiny/2","choices":[{"text":" 7 8"}],"usage":null}\n\n'
    usage = b'data: {"model":"tiny/2","choices":[],"usage":{"completion_tokens":5}}\n\n'
    done = b"data: [DONE]\n\n"
    stripped, kept = EventStream("tiny/2", "tiny", strip_usage=True), EventStream("tiny/2", "tiny")
    out = stripped.feed(token + usage[:30]) + stripped.feed(usage[30:] + done) + stripped.flush()
    assert out == token.replace(b"tiny/2", b"tiny") + done
    assert stripped.usage_tokens == 5 and stripped.token_chunks == 1  # counted, though not passed on
    whole = kept.feed(token + usage + done) + kept.flush()
    assert whole == (token + usage + done).replace(b"tiny/2", b"tiny")
