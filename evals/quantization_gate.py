"""The quantization gate: a quantized version against its own source (pure decisions)."""

from __future__ import annotations

from evals.agreement import AgreementReport
from evals.gates import quality_gate
from fledge.core.outcome import Check, GateResult, Outcome
from evals.reports import QualityReport
from fledge.core.policy import QualityGate, QuantizationPolicy


def _limit(name: str, measured: float, limit: float, detail: str, at_least: bool = False) -> Check:
    ok = measured >= limit if at_least else measured <= limit
    return Check(name=name, outcome=Outcome.PASS if ok else Outcome.FAIL, measured=measured, limit=limit, detail=detail)


def agreement_gate(policy: QuantizationPolicy, report: AgreementReport) -> GateResult:
    if report.prompts == 0:
        return GateResult.from_checks("quantization-agreement", [
            Check(name="agreement", outcome=Outcome.INCONCLUSIVE, detail="no prompts were scored")
        ])
    return GateResult.from_checks("quantization-agreement", [
        _limit("next-token agreement", report.top1_agreement, policy.min_logprob_agreement, at_least=True,
               detail=f"greedy next token equal to the source's on {report.top1_agreement:.1%} of {report.prompts} prompts"),
        _limit("log-probability error", report.logprob_mae, policy.max_logprob_mae,
               detail=f"mean |difference| {report.logprob_mae:.4f} nats over {report.positions} prompt tokens"),
        _limit("largest log-probability error", report.logprob_max_abs, policy.max_logprob_max_abs,
               detail=f"max |difference| {report.logprob_max_abs:.3f} nats"),
    ])


def quality_vs_source_gate(quality: QualityGate, policy: QuantizationPolicy, source: QualityReport, quantized: QualityReport) -> GateResult:
    result = quality_gate(quality.model_copy(update={"margin": policy.quality_margin}), source, quantized)
    return result.model_copy(update={"gate": "quantization-quality"})
