from evals.agreement import AgreementReport
from evals.quantization_gate import agreement_gate
from fledge.core.outcome import Outcome
from fledge.core.policy import load_policy

POLICY = load_policy().quantization


def report(mae, max_abs, top1=1.0, prompts=100):
    return AgreementReport(reference_ref="m/1", candidate_ref="m/2", prompts=prompts, positions=1000,
                           logprob_mae=mae, logprob_max_abs=max_abs, top1_agreement=top1)


def test_int8_within_arithmetic_error_passes():
    assert agreement_gate(POLICY, report(0.024, 0.33)).outcome is Outcome.PASS


def test_saturated_int8_fails_on_log_probabilities_even_when_top1_agrees():
    result = agreement_gate(POLICY, report(0.056, 0.95))
    assert result.outcome is Outcome.FAIL
    assert {c.name for c in result.checks if c.outcome is Outcome.FAIL} == {"log-probability error", "largest log-probability error"}


def test_top1_disagreement_fails():
    assert agreement_gate(POLICY, report(0.01, 0.1, top1=0.8)).outcome is Outcome.FAIL


def test_nothing_scored_is_inconclusive():
    assert agreement_gate(POLICY, report(0.0, 0.0, prompts=0)).outcome is Outcome.INCONCLUSIVE
