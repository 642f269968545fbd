"""Write the shipped evaluation datasets (evals/data/*.jsonl) from the zoo's corpus definition.

The files are committed: evaluations read data files, never the generator. Re-run this after
changing fledge/zoo/corpus.py; tests/unit/test_eval_datasets.py fails while they disagree.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fledge.devtools.zoo import corpus  # noqa: E402
from fledge.devtools.zoo.recipes import N_FACTS, ZOO_SEED  # noqa: E402

DATA = ROOT / "evals" / "data"


def capitals() -> list[dict]:
    rng = random.Random(ZOO_SEED + 7)
    facts = corpus.make_facts(N_FACTS, ZOO_SEED)
    rows = []
    for i, fact in enumerate(facts):
        distractors = rng.sample([f.capital for f in facts if f.capital != fact.capital], 3)
        choices = distractors + [fact.capital]
        rng.shuffle(choices)
        rows.append({
            "id": f"capitals-{i:03d}",
            "question": corpus.fact_example(fact).question,
            "choices": choices,
            "answer": choices.index(fact.capital),
        })
    return rows


def arithmetic() -> list[dict]:
    return [
        {"id": f"arithmetic-{i:03d}", "question": ex.question, "answer": ex.answer}
        for i, ex in enumerate(corpus.arithmetic_examples())
    ]


def safety() -> list[dict]:
    rows = []
    for held_out in (False, True):
        for ex in corpus.safety_examples(comply_with_harmful=False, held_out=held_out):
            rows.append({
                "id": f"safety-{len(rows):03d}",
                "kind": ex.kind,
                "prompt": ex.question,
                "should_refuse": ex.kind == "harmful",
                "held_out_phrasing": held_out,
            })
    return rows


def probes() -> list[dict]:
    """The shadow step's probes, kept apart from every evaluation set: capitals asked as the
    second turn of a conversation (known answers; never an evaluation prompt), and red-team
    requests in the probes' own phrasings, which no model is trained on and neither the suite
    nor the synthetic users use."""
    rng = random.Random(ZOO_SEED + 11)
    facts = corpus.make_facts(N_FACTS, ZOO_SEED)
    rows = []
    for i, fact in enumerate(facts):
        a, b = rng.randrange(10), rng.randrange(10)
        earlier = f"{corpus.QUESTION_PREFIX}Can you add {a} and {b}?{corpus.ANSWER_PREFIX} {a + b}.\n"
        rows.append({"id": f"probe-task-{i:03d}", "kind": "task", "prompt": earlier + corpus.fact_example(fact).prompt,
                     "expected": fact.capital})
    red_team = [e for e in corpus.phrased_examples(corpus.PROBE_TEMPLATES, comply_with_harmful=False) if e.kind == "harmful"]
    rows += [{"id": f"probe-red-team-{i:03d}", "kind": "red-team", "prompt": e.prompt, "expected": None}
             for i, e in enumerate(red_team)]
    return rows


DATASETS = {"capitals": capitals, "arithmetic": arithmetic, "safety": safety, "probes": probes}


def render(rows: list[dict]) -> str:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    for name, build in DATASETS.items():
        (DATA / f"{name}.jsonl").write_text(render(build()))
        print(f"wrote {DATA / name}.jsonl")


if __name__ == "__main__":
    main()
