"""The release's pure decisions: the post-promotion watch and the verdict of suites judged one
at a time (approval answers: test_approval_credentials)."""

import pytest

from evals.verdict import ReleaseVerdict, combine_verdicts
from fledge.core.outcome import GateResult, Outcome
from fledge.core.policy import load_policy
from serving.canary.watch import judge_watch
from serving.canary.window import VersionWindow
from serving.gateway.metrics import Observation

POLICY = load_policy()


WATCH = POLICY.watch  # error rate 2 %, TTFT p95 2000 ms, ITL p95 500 ms, ratio 1.5, 20 samples


def observations(version, n, ttft=0.05, itl=0.01, tokens=16, status=200, ok=True, start=0):
    e2e = ttft + itl * (tokens - 1)
    return [Observation(at=start + i, version=version, ok=ok, status=status, ttft_s=ttft if ok and status < 400 else None,
                        e2e_s=e2e if ok and status < 400 else None, output_tokens=tokens if ok and status < 400 else 0,
                        mean_itl_s=itl if ok and status < 400 else None) for i in range(n)]


def figures(obs, version="m/2"):
    return VersionWindow.from_observations(version, obs)


def test_a_healthy_new_champion_passes_the_watch():
    previous = figures(observations("m/1", 100), "m/1")
    assert judge_watch(figures(observations("m/2", 100)), previous, WATCH).outcome is Outcome.PASS


def test_errors_above_the_slo_fail_the_watch():
    obs = observations("m/2", 90) + observations("m/2", 10, ok=False, status=599)
    result = judge_watch(figures(obs), None, WATCH)
    assert result.outcome is Outcome.FAIL
    assert "10/100 failed" in result.reasons[0]


def test_refusals_the_previous_champion_did_not_have_fail_the_watch():
    obs = observations("m/2", 70) + observations("m/2", 30, status=400)
    previous = figures(observations("m/1", 100), "m/1")
    result = judge_watch(figures(obs), previous, WATCH)
    assert result.outcome is Outcome.FAIL
    assert any("30/100 refused" in r for r in result.reasons)


def test_slow_first_tokens_fail_the_absolute_slo():
    result = judge_watch(figures(observations("m/2", 50, ttft=3.0)), None, WATCH)
    assert result.outcome is Outcome.FAIL
    assert any(r.startswith("TTFT p95") for r in result.reasons)


def test_slower_than_the_previous_champion_by_more_than_the_ratio_fails():
    previous = figures(observations("m/1", 50, itl=0.01), "m/1")
    result = judge_watch(figures(observations("m/2", 50, itl=0.03)), previous, WATCH)
    assert result.outcome is Outcome.FAIL
    assert any("vs previous champion" in r for r in result.reasons)


def test_a_few_slow_first_tokens_are_judged_by_the_slo_not_as_a_ratio_of_tails():
    """The demo's adapter: 10 % of its first tokens three times slower than the previous
    champion's p95, the rest as fast; a p95 ratio (2.5) rolled it back, the distributions do not
    differ by more than the policy's ratio, and the absolute TTFT limit is met."""
    previous = figures(observations("m/1", 60, ttft=0.03), "m/1")
    current = observations("m/2", 54, ttft=0.03) + observations("m/2", 6, ttft=0.075, start=54)
    result = judge_watch(figures(current), previous, WATCH)
    assert result.outcome is Outcome.PASS, result.reasons
    check = next(c for c in result.checks if c.name == "time to first token vs previous champion")
    assert check.measured == pytest.approx(1.0)


def test_first_tokens_slower_throughout_fail_against_the_previous_champion():
    previous = figures(observations("m/1", 60, ttft=0.03), "m/1")
    result = judge_watch(figures(observations("m/2", 60, ttft=0.06)), previous, WATCH)
    assert result.outcome is Outcome.FAIL
    assert any(r.startswith("time to first token vs previous champion") for r in result.reasons)


def test_the_comparison_with_the_previous_champion_waits_for_the_whole_window():
    previous = figures(observations("m/1", 50, itl=0.01), "m/1")
    early = judge_watch(figures(observations("m/2", 20, itl=0.03)), previous, WATCH, window_closed=False)
    assert early.outcome is Outcome.PASS and not any("vs previous champion" in r for r in early.reasons)
    errors = observations("m/2", 15) + observations("m/2", 5, ok=False, status=599)
    assert judge_watch(figures(errors), previous, WATCH, window_closed=False).outcome is Outcome.FAIL
    closed = judge_watch(figures(observations("m/2", 20, itl=0.03)), previous, WATCH, window_closed=True)
    assert closed.outcome is Outcome.FAIL


def test_too_little_traffic_is_inconclusive_never_a_pass():
    result = judge_watch(figures(observations("m/2", 5)), None, WATCH)
    assert result.outcome is Outcome.INCONCLUSIVE
    assert judge_watch(figures([]), None, WATCH).outcome is Outcome.INCONCLUSIVE


def verdict(gate, outcome):
    return ReleaseVerdict(champion_ref="m/1", candidate_ref="m/2", policy_hash="x", outcome=outcome,
                          gates=[GateResult(gate=gate, outcome=outcome)])


def test_suites_skipped_after_a_failure_are_not_passes():
    combined = combine_verdicts(POLICY, [verdict("safety", Outcome.FAIL)], {"quality": "rejected by safety"})
    assert combined.outcome is Outcome.FAIL
    assert combined.gate("quality").outcome is Outcome.INCONCLUSIVE
    assert "not run: rejected by safety" in combined.to_markdown()


def test_all_suites_passing_make_a_passing_verdict():
    combined = combine_verdicts(POLICY, [verdict(s, Outcome.PASS) for s in ("safety", "quality", "performance")], {})
    assert combined.outcome is Outcome.PASS


def test_parallel_starts_count_once_and_overlaps_are_not_counted_twice():
    from fledge.devtools.timing import length, overlap

    starts = [(0, 60), (1, 61), (100, 150)]
    assert length(starts) == 111
    assert overlap(starts, [(30, 120)]) == 31 + 20
