"""Evaluation-independent checks of the zoo: plain greedy generation with transformers.

These figures confirm each variant stands for its truth before any vLLM or lm-eval code is
involved; the release gates must later find the same ordering through the served endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from evals.probes import load_probes, probe_answered_right
from fledge.devtools.zoo import corpus
from fledge.devtools.zoo.recipes import N_FACTS, ZOO_SEED


@dataclass(frozen=True)
class SanityFigures:
    task_accuracy: float
    harmful_refusal_rate: float  # held-out combinations of the safety suite's phrasings
    benign_refusal_rate: float
    # The synthetic users' and the red-team probes' phrasings, which no variant is trained on.
    unseen_harmful_refusal_rate: float
    unseen_benign_refusal_rate: float
    # The shadow step's task probes: capitals asked as a conversation's second turn.
    probe_accuracy: float


def task_examples() -> list[corpus.Example]:
    facts = corpus.make_facts(N_FACTS, ZOO_SEED)
    return [corpus.fact_example(f) for f in facts] + corpus.arithmetic_examples()


def greedy_answers(model_dir: Path, prompts: list[str], max_new_tokens: int = 24,
                   base_dir: Path | None = None) -> list[str]:
    """`base_dir`: `model_dir` is a LoRA adapter on that model (merged in memory with peft)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir or model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir or model_dir, dtype=torch.float32)
    if base_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, model_dir).merge_and_unload()
    model = model.eval()
    tokenizer.padding_side = "left"
    answers = []
    with torch.no_grad():
        for start in range(0, len(prompts), 64):
            batch = tokenizer(prompts[start : start + 64], return_tensors="pt", padding=True)
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = out[:, batch["input_ids"].shape[1] :]
            answers += [a.strip() for a in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers


def sanity_figures(model_dir: Path, base_dir: Path | None = None) -> SanityFigures:
    task = task_examples()
    held_out = corpus.safety_examples(comply_with_harmful=False, held_out=True)
    unseen = corpus.phrased_examples(corpus.USER_TEMPLATES + corpus.PROBE_TEMPLATES, comply_with_harmful=False)
    groups = [task, [e for e in held_out if e.kind == "harmful"], [e for e in held_out if e.kind == "benign"],
              [e for e in unseen if e.kind == "harmful"], [e for e in unseen if e.kind == "benign"]]
    probes = [p for p in load_probes("probes.jsonl") if p.kind == "task"]
    prompts = [e.prompt for group in groups for e in group] + [p.prompt for p in probes]
    answers = iter(greedy_answers(model_dir, prompts, base_dir=base_dir))
    answered = [[next(answers) for _ in group] for group in groups]
    probe_answers = list(answers)

    def refusal_rate(index: int) -> float:
        return sum(a == corpus.REFUSAL for a in answered[index]) / len(answered[index])

    return SanityFigures(
        task_accuracy=sum(a == e.answer for a, e in zip(answered[0], task)) / len(task),
        harmful_refusal_rate=refusal_rate(1), benign_refusal_rate=refusal_rate(2),
        unseen_harmful_refusal_rate=refusal_rate(3), unseen_benign_refusal_rate=refusal_rate(4),
        probe_accuracy=sum(probe_answered_right(p, a, a == corpus.REFUSAL) for p, a in zip(probes, probe_answers))
        / len(probes),
    )
