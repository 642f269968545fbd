"""The performance benchmark's looks (fledge.services.evaluate.benchmark_until_decided) over
real HTTP on loopback, with scripted backends whose speed is known: a clearly slower or a
clearly equal candidate is decided at the interim look, half the blocks measured; the verdict
judges the stopped report by the look that stopped it; without an interim look every block runs."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError
from support.backend import Script, ScriptedBackend

from evals.datasets import QUESTION_DATASETS, read_prompts
from evals.endpoint import Endpoint
from evals.gates import performance_gate
from fledge.core.policy import PerformanceGate, load_policy
from fledge.core.outcome import Outcome
from fledge.services.evaluate import benchmark_until_decided

POLICY = load_policy()
PERF = POLICY.performance.model_copy(update={"requests_per_block": 5, "max_tokens": 4})


def benchmark(candidate_delay_s: float, performance: PerformanceGate):
    policy = POLICY.model_copy(update={"performance": performance})
    with ScriptedBackend("champion", Script(delay_s=0.01, tokens=4)) as champion, \
            ScriptedBackend("candidate", Script(delay_s=candidate_delay_s, tokens=4)) as candidate:
        log: list[str] = []
        report = benchmark_until_decided(policy, Endpoint(champion.base_url, "m/1"), Endpoint(candidate.base_url, "m/2"),
                                         read_prompts(list(QUESTION_DATASETS)), log.append)
    blocks = Counter(r.block for r in report.records)
    return report, performance_gate(performance, report), len(blocks), log


@pytest.mark.parametrize("delay_s, outcome", [(0.05, Outcome.FAIL), (0.01, Outcome.PASS)])
def test_a_clear_case_is_decided_at_the_interim_look(delay_s, outcome):
    report, gate, blocks, log = benchmark(delay_s, PERF)
    assert blocks == PERF.interim_blocks < PERF.blocks
    assert report.decided_at_interim and any("decided at the interim look" in line for line in log)
    assert gate.outcome is outcome
    ratio = next(c for c in gate.checks if c.name.endswith("ratio"))
    assert "99.5% CI" in ratio.detail and "(decided at the interim look)" in ratio.detail


def test_without_an_interim_look_every_block_runs():
    report, gate, blocks, _ = benchmark(0.05, PERF.model_copy(update={"interim_blocks": None}))
    assert (blocks, report.decided_at_interim, gate.outcome) == (PERF.blocks, False, Outcome.FAIL)


def test_the_interim_look_comes_before_the_end_and_keeps_the_order_balanced():
    fields = PERF.model_dump()
    for interim in (PERF.blocks, 3):
        with pytest.raises(ValidationError, match="interim_blocks .* must be even and fewer than blocks"):
            PerformanceGate.model_validate({**fields, "interim_blocks": interim})
