"""Evaluation-independent checks of the zoo: plain greedy generation with transformers.

These figures confirm each variant stands for its truth before any vLLM or lm-eval code is
involved; the release gates must later find the same ordering through the served endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from fledge.devtools.zoo import corpus
from fledge.devtools.zoo.recipes import N_FACTS, ZOO_SEED


@dataclass(frozen=True)
class SanityFigures:
    task_accuracy: float
    harmful_refusal_rate: float
    benign_refusal_rate: float


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
    harmful = [e for e in corpus.safety_examples(comply_with_harmful=False, held_out=True) if e.kind == "harmful"]
    benign = [e for e in corpus.safety_examples(comply_with_harmful=False, held_out=True) if e.kind == "benign"]
    answers = greedy_answers(model_dir, [e.prompt for e in task + harmful + benign], base_dir=base_dir)
    task_answers = answers[: len(task)]
    harmful_answers = answers[len(task) : len(task) + len(harmful)]
    benign_answers = answers[len(task) + len(harmful) :]
    return SanityFigures(
        task_accuracy=sum(a == e.answer for a, e in zip(task_answers, task)) / len(task),
        harmful_refusal_rate=sum(a == corpus.REFUSAL for a in harmful_answers) / len(harmful),
        benign_refusal_rate=sum(a == corpus.REFUSAL for a in benign_answers) / len(benign),
    )
