"""Numeric agreement of two served models on the same prompts: a cheap check that catches
broken quantization (e.g. int8 saturation on CPUs without VNNI) that task metrics may hide.

For each prompt, both endpoints score every prompt token (`echo` + `logprobs`) and choose the
next token greedily. Reported: mean and max absolute difference of the prompt-token
log-probabilities, and the share of prompts whose greedy next token is the same.
"""

from __future__ import annotations

import openai
from pydantic import BaseModel, ConfigDict

from evals.endpoint import Endpoint


class AgreementReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reference_ref: str
    candidate_ref: str
    prompts: int
    positions: int
    logprob_mae: float
    logprob_max_abs: float
    top1_agreement: float


def _score(client: openai.OpenAI, endpoint: Endpoint, prompt: str) -> tuple[list[float], str]:
    reply = client.completions.create(
        model=endpoint.model, prompt=prompt, max_tokens=1, temperature=0, echo=True, logprobs=1
    )
    choice = reply.choices[0]
    logprobs = choice.logprobs.token_logprobs
    # With echo, the prompt's tokens come first (the very first has no log-probability);
    # the last entry is the generated token.
    prompt_logprobs = [lp for lp in logprobs[:-1] if lp is not None]
    generated = choice.logprobs.tokens[-1]
    return prompt_logprobs, generated


def measure_agreement(reference: Endpoint, candidate: Endpoint, prompts: list[str]) -> AgreementReport:
    clients = {
        id(e): openai.OpenAI(base_url=e.base_url, api_key=e.api_key, max_retries=2, timeout=60)
        for e in (reference, candidate)
    }
    diffs: list[float] = []
    same_next = 0
    for prompt in prompts:
        ref_lp, ref_next = _score(clients[id(reference)], reference, prompt)
        cand_lp, cand_next = _score(clients[id(candidate)], candidate, prompt)
        if len(ref_lp) != len(cand_lp):
            raise ValueError(f"the two models tokenized {prompt!r} differently; they cannot be compared")
        diffs += [abs(a - b) for a, b in zip(ref_lp, cand_lp)]
        same_next += ref_next == cand_next
    return AgreementReport(
        reference_ref=reference.model,
        candidate_ref=candidate.model,
        prompts=len(prompts),
        positions=len(diffs),
        logprob_mae=sum(diffs) / len(diffs) if diffs else float("nan"),
        logprob_max_abs=max(diffs, default=float("nan")),
        top1_agreement=same_next / len(prompts) if prompts else 0.0,
    )
