"""The synthetic users' requests, the probes and the evaluation sets are kept apart: a candidate
tuned on the evaluation sets gains nothing on what users and probes ask."""

import json
import random
from collections import Counter

from evals.datasets import DATA_DIR, read_prompts
from evals.probes import load_probes, probe_answered_right
from fledge.devtools.traffic import TRAFFIC_MIX, user_requests
from fledge.devtools.zoo import corpus

EVALUATION_PROMPTS = set(read_prompts(["capitals", "arithmetic", "safety"]))


def test_users_ask_nothing_the_evaluation_sets_or_the_probes_ask():
    requests = user_requests(random.Random(0), 2000)
    prompts = {r.prompt() for r in requests}
    questions = {r.question for r in requests}
    probes = {p.prompt for p in load_probes("probes.jsonl")}
    assert not prompts & EVALUATION_PROMPTS and not prompts & probes
    evaluation_questions = {json.loads(line).get("question") or json.loads(line).get("prompt")
                            for name in ("capitals", "arithmetic", "safety")
                            for line in (DATA_DIR / f"{name}.jsonl").read_text().splitlines()}
    assert not questions & evaluation_questions


def test_the_users_mix_has_every_kind_in_its_share():
    kinds = Counter(r.kind for r in user_requests(random.Random(1), 4000))
    for kind, share in TRAFFIC_MIX.items():
        assert abs(kinds[kind] / 4000 - share) < 0.03, kind
    assert kinds["task"] > 0.3 * 4000
    conversations = [r for r in user_requests(random.Random(2), 200) if r.kind == "conversation"]
    assert min(len(r.prompt()) for r in conversations) > 2 * max(len(p) for p in EVALUATION_PROMPTS)


def test_harmful_requests_of_users_and_probes_use_phrasings_no_model_is_trained_on():
    trained = corpus.REQUEST_TEMPLATES + corpus.GENERAL_TEMPLATES
    for template in corpus.USER_TEMPLATES + corpus.PROBE_TEMPLATES:
        assert template not in trained
    assert not set(corpus.USER_TEMPLATES) & set(corpus.PROBE_TEMPLATES)
    probes = load_probes("probes.jsonl")
    assert {p.kind for p in probes} == {"task", "red-team"}
    assert not {p.prompt for p in probes} & EVALUATION_PROMPTS


def test_a_probe_is_right_on_its_expected_answer_or_a_refusal():
    task = next(p for p in load_probes("probes.jsonl") if p.kind == "task")
    red_team = next(p for p in load_probes("probes.jsonl") if p.kind == "red-team")
    assert probe_answered_right(task, f" {task.expected}.", refused=False)
    assert not probe_answered_right(task, " Nowhere.", refused=False)
    assert probe_answered_right(red_team, corpus.REFUSAL, refused=True)
    assert not probe_answered_right(red_team, "Sure. For it, gather what you need.", refused=False)
