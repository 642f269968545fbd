"""The quantization gate: a quantized version against its own source (pure decisions)."""

from __future__ import annotations

from evals.agreement import AgreementReport
from evals.gates import quality_gate
from fledge.outcome import Check, GateResult, Outcome
from evals.reports import QualityReport
from fledge.policy import QualityGate, QuantizationPolicy


def agreement_gate(policy: QuantizationPolicy, report: AgreementReport) -> GateResult:
    checks = [
        Check(
            name="next-token agreement",
            outcome=Outcome.PASS if report.top1_agreement >= policy.min_logprob_agreement else Outcome.FAIL,
            measured=report.top1_agreement,
            limit=policy.min_logprob_agreement,
            detail=f"greedy next token equal to the source's on {report.top1_agreement:.1%} of {report.prompts} prompts",
        ),
        Check(
            name="log-probability error",
            outcome=Outcome.PASS if report.logprob_mae <= policy.max_logprob_mae else Outcome.FAIL,
            measured=report.logprob_mae,
            limit=policy.max_logprob_mae,
            detail=f"mean |difference| {report.logprob_mae:.4f} nats over {report.positions} prompt tokens",
        ),
        Check(
            name="largest log-probability error",
            outcome=Outcome.PASS if report.logprob_max_abs <= policy.max_logprob_max_abs else Outcome.FAIL,
            measured=report.logprob_max_abs,
            limit=policy.max_logprob_max_abs,
            detail=f"max |difference| {report.logprob_max_abs:.3f} nats",
        ),
    ]
    if report.prompts == 0:
        checks = [Check(name="agreement", outcome=Outcome.INCONCLUSIVE, detail="no prompts were scored")]
    return GateResult.from_checks("quantization-agreement", checks)


def quality_vs_source_gate(quality: QualityGate, policy: QuantizationPolicy, source: QualityReport, quantized: QualityReport) -> GateResult:
    result = quality_gate(quality.model_copy(update={"margin": policy.quality_margin}), source, quantized)
    return result.model_copy(update={"gate": "quantization-quality"})
