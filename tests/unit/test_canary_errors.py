"""The error rule, what an analysis window counts, and the rollout's bounds: pure, no servers."""

import random

from fledge.core.outcome import Outcome
from fledge.core.policy import load_policy
from fledge.devtools.rollout_simulation import simulate_rollout
from serving.canary.analysis import analyze
from serving.canary.state_machine import ActionKind, Phase, RolloutState, advance, decide
from serving.canary.watch import judge_watch
from serving.canary.window import VersionWindow
from serving.gateway.metrics import Observation

POLICY = load_policy().canary
DEMO = load_policy("policies/demo.yaml").canary


def window(version, n, errors=0, seed=0):
    rng = random.Random(seed)
    values = [rng.lognormvariate(-4, 0.3) for _ in range(n - errors)]
    return VersionWindow(version=version, requests=n, errors=errors, per_token_latency_s=values, ttft_s=values)


def test_a_canary_failing_ten_percent_is_never_passed_on_the_old_rules_margin():
    """The Wilson lower bound used to have to clear 5 % first: 4/40 and 5/50 passed."""
    for n, errors in ((40, 4), (50, 5)):
        result = analyze(window("s", n), window("c", n, errors=errors, seed=1), POLICY)
        assert result.outcome is not Outcome.PASS
        assert "canary errors" in result.reasons[0]


def test_a_canary_confidently_above_the_limit_or_the_baseline_fails():
    above_limit = analyze(window("s", 200), window("c", 200, errors=20, seed=1), POLICY)
    assert above_limit.outcome is Outcome.FAIL and "confidently above the limit" in above_limit.reasons[0]
    # 2 % is under the 5 % limit, but the baseline failed none of 400.
    above_baseline = analyze(window("s", 400), window("c", 100, errors=2, seed=1), POLICY)
    assert above_baseline.outcome is Outcome.FAIL and "confidently above the reference" in above_baseline.reasons[0]


def test_a_pass_needs_the_requests_that_rule_out_ten_percent():
    """0.9**29 < 0.05: 29 requests without a failure rule a 10 % error rate out; 25 do not."""
    assert analyze(window("s", 60), window("c", 29, seed=1), POLICY.model_copy(update={"min_samples": 20})).outcome is Outcome.PASS
    few = analyze(window("s", 60), window("c", 25, seed=1), POLICY.model_copy(update={"min_samples": 20}))
    assert few.outcome is Outcome.INCONCLUSIVE and "10% is not ruled out yet" in few.reasons[0]


def test_under_the_demos_traffic_a_ten_percent_failing_canary_is_rolled_back_before_150_requests():
    rng = random.Random(11)
    runs = [simulate_rollout(DEMO, 0.10, 0.0, 4.0, rng) for _ in range(40)]
    rolled_back = [r for r in runs if r.phase is Phase.ROLLED_BACK]
    assert len(rolled_back) >= 36 and max(r.canary_requests for r in rolled_back) < 150
    good = [simulate_rollout(DEMO, 0.0, 0.0, 4.0, rng) for _ in range(40)]
    assert all(r.phase is Phase.PROMOTED for r in good)


def obs(version, status=200, ok=True, pinned=False, seq=0):
    good = ok and status < 400
    return Observation(at=0.0, version=version, ok=ok, status=status, ttft_s=0.05 if good else None,
                       e2e_s=0.2 if good else None, output_tokens=8 if good else 0, mean_itl_s=0.02 if good else None,
                       pinned=pinned, seq=seq)


def test_pinned_requests_and_cancellations_are_counted_apart_from_the_sample():
    observations = ([obs("c") for _ in range(30)] + [obs("c", 599, ok=False, pinned=True) for _ in range(10)]
                    + [obs("c", 499) for _ in range(4)])
    window_ = VersionWindow.from_observations("c", observations)
    assert (window_.requests, window_.errors, window_.pinned, window_.cancelled) == (30, 0, 10, 4)
    assert len(window_.per_token_latency_s) == 30
    assert window_.cancellation_rate == 4 / 34


def test_a_canary_its_users_give_up_on_fails():
    stable = window("s", 100)
    canary = window("c", 100, seed=1).model_copy(update={"cancelled": 25})
    result = analyze(stable, canary, POLICY)
    assert result.outcome is Outcome.FAIL and any("cancelled by clients" in r for r in result.reasons)


def test_an_ejected_canary_fails_and_an_ejected_baseline_is_an_error():
    stable, canary = window("s", 60), window("c", 60, seed=1)
    assert analyze(stable, canary, POLICY, ejected={"c": "connection refused"}).outcome is Outcome.FAIL
    assert analyze(stable, canary, POLICY, ejected={"s": "3 failed requests in a row"}).outcome is Outcome.ERROR


def test_a_step_without_a_decision_past_the_progress_deadline_rolls_back():
    state = RolloutState(model="m", stable="m/1", canary="m/2", phase=Phase.BAKING, step=0, canary_weight=25,
                         step_started_at=100.0)
    inconclusive = analyze(window("s", 5), window("c", 5, seed=1), POLICY)
    assert decide(state, inconclusive, POLICY, 100.0 + POLICY.bake_seconds + 1).kind is ActionKind.WAIT
    late = decide(state, inconclusive, POLICY, 100.0 + POLICY.progress_deadline_seconds)
    assert late.kind is ActionKind.ROLLBACK and "progress deadline" in late.reason
    unreachable = decide(state, None, POLICY, 100.0 + POLICY.progress_deadline_seconds)
    assert unreachable.kind is ActionKind.ROLLBACK


def test_a_step_records_where_its_window_starts_in_the_gateways_sequence():
    state = RolloutState(model="m", stable="m/1", canary="m/2", started_seq=7)
    stepped = advance(state, decide(state, None, POLICY, 0.0), 0.0, sequence=42)
    assert (stepped.step_started_seq, stepped.started_seq) == (42, 7)


def test_the_watch_checks_its_minimum_samples_before_any_rate():
    watch = load_policy().watch
    one_in_three = VersionWindow.from_observations("m/2", [obs("m/2"), obs("m/2"), obs("m/2", 599, ok=False)])
    assert judge_watch(one_in_three, None, watch, window_closed=False).outcome is Outcome.INCONCLUSIVE
    dead = VersionWindow.from_observations("m/2", [obs("m/2", 599, ok=False) for _ in range(watch.min_samples)])
    assert judge_watch(dead, None, watch, window_closed=False).outcome is Outcome.FAIL
