import random

import pytest
from pydantic import ValidationError

from serving.gateway.routes import Backend, RouteBook, RouteChangeRefused, RouteTable, load_routes, save_routes
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


def test_every_model_s_routes_survive_a_restart(tmp_path):
    other = RouteTable.serving_only("other", Backend(version="other/3", base_url="http://c/v1"))
    book = RouteBook().with_table(table(60, 40)).with_table(other)
    save_routes(book, tmp_path / "routes.json")
    assert load_routes(tmp_path / "routes.json") == book
    assert load_routes(tmp_path / "missing.json") == RouteBook()
    assert book.holding("other/3") == other and book.holding("tiny/9") is None


def test_a_one_model_gateway_s_saved_table_is_read_as_a_book_of_it(tmp_path):
    (tmp_path / "routes.json").write_text(table(60, 40).model_dump_json())
    assert load_routes(tmp_path / "routes.json").tables == {"tiny": table(60, 40)}


def test_a_book_keys_each_table_by_its_model():
    with pytest.raises(ValidationError, match="keyed by its model name"):
        RouteBook(tables={"other": table()})


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


def with_baseline():
    base = table(75, 25)
    return base.with_backend(Backend(version="tiny/1+baseline", base_url="http://c/v1", role="baseline",
                                     served_model="tiny/1")).with_weights({"tiny/1": 50, "tiny/1+baseline": 25, "tiny/2": 25})


def test_weights_name_who_gets_traffic_and_everyone_else_gets_none():
    edited = with_baseline().with_weights({"tiny/2": 100})
    assert {k: b.weight for k, b in edited.backends.items()} == {"tiny/1": 0, "tiny/2": 100, "tiny/1+baseline": 0}
    with pytest.raises(RouteChangeRefused, match="unknown version"):
        table().with_weights({"tiny/9": 100})
    with pytest.raises(ValidationError, match="add up to 100"):
        table().with_weights({"tiny/1": 60})


def test_a_drained_backend_gives_its_share_to_stable_and_can_then_be_removed():
    drained = with_baseline().draining("tiny/2")
    assert (drained.backends["tiny/2"].draining, drained.backends["tiny/2"].weight) == (True, 0)
    assert drained.backends["tiny/1"].weight == 75
    assert "tiny/2" not in drained.without("tiny/2").backends
    with pytest.raises(RouteChangeRefused, match="drain it first"):
        table().without("tiny/2")
    with pytest.raises(RouteChangeRefused, match="only backend"):
        RouteTable.serving_only("tiny", table().backends["tiny/1"]).draining("tiny/1")


def test_all_traffic_to_one_version_keeps_the_others_warm_and_drains_the_baseline():
    promoted = with_baseline().all_to("tiny/2")
    backends = promoted.backends
    assert (backends["tiny/2"].role, backends["tiny/2"].weight) == ("stable", 100)
    assert (backends["tiny/1"].role, backends["tiny/1"].weight, backends["tiny/1"].draining) == ("canary", 0, False)
    assert backends["tiny/1+baseline"].draining and promoted.stable().version == "tiny/2"
    assert with_baseline().backends["tiny/1"].weight == 50  # edits return new tables


def test_reconciling_keeps_live_backends_and_gives_a_dead_ones_share_to_stable():
    split = RouteTable(model="tiny", backends={
        "tiny/1": Backend(version="tiny/1", base_url="http://a/v1", role="stable", weight=50),
        "tiny/2": Backend(version="tiny/2", base_url="http://b/v1", role="canary", weight=25),
        "tiny/1+baseline": Backend(version="tiny/1+baseline", base_url="http://c/v1", role="baseline", weight=25),
    })
    kept = split.reconciled({"tiny/1", "tiny/2"})
    assert {k: b.weight for k, b in kept.backends.items()} == {"tiny/1": 75, "tiny/2": 25}
    only_canary = split.reconciled({"tiny/2"})  # stable is dead: the live canary becomes stable with it all
    assert {k: (b.role, b.weight) for k, b in only_canary.backends.items()} == {"tiny/2": ("stable", 100)}
    with pytest.raises(RouteChangeRefused, match="answers its health check"):
        split.reconciled(set())


def test_ejected_backends_lose_their_effective_share_but_never_all_of_them():
    split = table(75, 25)
    assert split.effective_weights({"tiny/2"}) == {"tiny/1": 100.0, "tiny/2": 0.0}
    assert split.effective_weights({"tiny/1", "tiny/2"}) == {"tiny/1": 75.0, "tiny/2": 25.0}  # none left: all tried
    rng = random.Random(3)
    assert {split.choose(None, rng, ejected={"tiny/2"}).version for _ in range(200)} == {"tiny/1"}
