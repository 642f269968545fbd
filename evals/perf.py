"""Performance regression benchmark: champion and candidate in alternating blocks.

Each block sends the same prompts to one endpoint, then to the other (ABBA order across
blocks), one request at a time, streaming, with a fixed number of output tokens
(`ignore_eos`), so both models do the same work and machine noise hits both alike. Metrics
follow `vllm bench serve`: TTFT = first token chunk after sending; ITL = gaps between
successive chunks; TPOT = (e2e - TTFT) / (output tokens - 1); output tokens from the
server's usage report.
"""

from __future__ import annotations

import time
from typing import Callable

import openai

from evals.endpoint import Endpoint
from evals.reports import PerformanceReport, RequestRecord
from fledge.core.policy import PerformanceGate

WARMUP_REQUESTS = 2


def measure_request(client: openai.OpenAI, endpoint: Endpoint, prompt: str, max_tokens: int) -> dict:
    sent = time.perf_counter()
    token_times: list[float] = []
    output_tokens = 0
    try:
        stream = client.completions.create(
            model=endpoint.model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
        for chunk in stream:
            # Every chunk with a choice is one decoding step. Its text can be empty (a special
            # token such as EOS, generated on under ignore_eos), and it still took the time.
            if chunk.choices:
                token_times.append(time.perf_counter())
            if chunk.usage is not None:
                output_tokens = chunk.usage.completion_tokens
    except openai.APIError as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    if not token_times:
        return {"ok": False, "error": "the stream ended without a token"}
    return {
        "ok": True,
        "ttft_s": token_times[0] - sent,
        "e2e_latency_s": token_times[-1] - sent,
        "itl_s": [b - a for a, b in zip(token_times, token_times[1:])],
        "output_tokens": output_tokens or len(token_times),
    }


def run_benchmark(
    champion: Endpoint,
    candidate: Endpoint,
    prompts: list[str],
    policy: PerformanceGate,
    log: Callable[[str], None] = lambda _: None,
    first_block: int = 0,
) -> PerformanceReport:
    """`first_block` continues an earlier run's numbering (its prompts and A/B order) so that
    both reports' records can be pooled."""
    if len(prompts) < policy.requests_per_block:
        raise ValueError(f"need {policy.requests_per_block} prompts per block, got {len(prompts)}")
    clients = {
        "champion": (champion, openai.OpenAI(base_url=champion.base_url, api_key=champion.api_key, max_retries=0, timeout=60)),
        "candidate": (candidate, openai.OpenAI(base_url=candidate.base_url, api_key=candidate.api_key, max_retries=0, timeout=60)),
    }
    for endpoint, client in clients.values():
        for prompt in prompts[:WARMUP_REQUESTS]:
            measure_request(client, endpoint, prompt, policy.max_tokens)

    records: list[RequestRecord] = []
    busy = {"champion": 0.0, "candidate": 0.0}
    started = time.perf_counter()
    for block in range(first_block, first_block + policy.blocks):
        block_prompts = [prompts[(block * policy.requests_per_block + i) % len(prompts)] for i in range(policy.requests_per_block)]
        order = ("champion", "candidate") if block % 2 == 0 else ("candidate", "champion")
        for role in order:
            endpoint, client = clients[role]
            block_start = time.perf_counter()
            for index, prompt in enumerate(block_prompts):
                result = measure_request(client, endpoint, prompt, policy.max_tokens)
                records.append(RequestRecord(endpoint=role, block=block, prompt_index=index, **result))
            busy[role] += time.perf_counter() - block_start
        log(f"performance block {block + 1}/{first_block + policy.blocks} done")
    tokens = {role: sum(r.output_tokens for r in records if r.endpoint == role and r.ok) for role in busy}
    return PerformanceReport(
        champion_ref=champion.model,
        candidate_ref=candidate.model,
        records=records,
        wall_seconds=time.perf_counter() - started,
        throughput_tokens_per_s={role: tokens[role] / busy[role] if busy[role] else 0.0 for role in busy},
    )


def pooled(first: PerformanceReport, more: PerformanceReport) -> PerformanceReport:
    """One report from two runs of the same pair (the second continuing the first's blocks)."""
    def tokens(report: PerformanceReport, role: str) -> int:
        return sum(r.output_tokens for r in report.records if r.endpoint == role and r.ok)

    throughput = {}
    for role in ("champion", "candidate"):
        # Each report's busy time is its tokens over its throughput.
        busy = sum(tokens(r, role) / r.throughput_tokens_per_s[role] for r in (first, more) if r.throughput_tokens_per_s.get(role))
        throughput[role] = (tokens(first, role) + tokens(more, role)) / busy if busy else 0.0
    return first.model_copy(update={"records": first.records + more.records,
                                    "wall_seconds": first.wall_seconds + more.wall_seconds,
                                    "throughput_tokens_per_s": throughput})
