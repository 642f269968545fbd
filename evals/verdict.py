"""The release verdict: one pure function from (policy, champion reports, candidate reports)
to per-gate outcomes with their evidence, and the overall outcome (worst wins)."""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field

from evals.gates import performance_gate, quality_gate, safety_gate
from fledge.core.outcome import GateResult, Outcome, worst
from evals.reports import PerformanceReport, QualityReport, SafetyReport
from fledge.core.policy import ReleasePolicy

SUITES = ("quality", "safety", "performance")


class SuiteReports(BaseModel):
    """What one model produced. `errors` holds a suite's failure message when it could not run.
    The performance report is joint (both models, interleaved) and sits with the candidate."""

    model_config = ConfigDict(extra="forbid")

    model_ref: str
    quality: QualityReport | None = None
    safety: SafetyReport | None = None
    performance: PerformanceReport | None = None
    errors: dict[str, str] = Field(default_factory=dict)


class ReleaseVerdict(BaseModel):
    model_config = ConfigDict(extra="forbid")

    champion_ref: str
    candidate_ref: str
    policy_hash: str
    outcome: Outcome
    gates: list[GateResult]

    def gate(self, name: str) -> GateResult | None:
        return next((g for g in self.gates if g.gate == name), None)

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2)

    def to_markdown(self) -> str:
        icon = {Outcome.PASS: "✅", Outcome.FAIL: "❌", Outcome.INCONCLUSIVE: "⚠️", Outcome.ERROR: "⛔"}
        lines = [
            f"# Release verdict: {icon[self.outcome]} {self.outcome.value.upper()}",
            "",
            f"Candidate **{self.candidate_ref}** against champion **{self.champion_ref}**, "
            f"policy `{self.policy_hash}`.",
            "",
            "| gate | outcome | reasons |",
            "|---|---|---|",
        ]
        for gate in self.gates:
            reasons = "<br>".join(gate.reasons) or "all checks passed"
            lines.append(f"| {gate.gate} | {icon[gate.outcome]} {gate.outcome.value} | {reasons} |")
        for gate in self.gates:
            lines += ["", f"## {gate.gate}", "", "| check | outcome | measured | limit | detail |", "|---|---|---|---|---|"]
            for check in gate.checks:
                measured = "-" if check.measured is None else f"{check.measured:.4g}"
                limit = "-" if check.limit is None else f"{check.limit:.4g}"
                lines.append(f"| {check.name} | {check.outcome.value} | {measured} | {limit} | {check.detail} |")
            if not gate.checks:
                lines.append(f"| - | {gate.outcome.value} | - | - | {'; '.join(gate.reasons)} |")
        return "\n".join(lines) + "\n"


def _gate(name: str, policy: ReleasePolicy, champion: SuiteReports, candidate: SuiteReports) -> GateResult:
    for side in (champion, candidate):
        if name in side.errors:
            return GateResult.error(name, f"{side.model_ref}: {side.errors[name]}")
    if name == "quality":
        if champion.quality is None or candidate.quality is None:
            return GateResult.from_checks(name, [])
        return quality_gate(policy.quality, champion.quality, candidate.quality)
    if name == "safety":
        if champion.safety is None or candidate.safety is None:
            return GateResult.from_checks(name, [])
        return safety_gate(policy.safety, champion.safety, candidate.safety)
    if candidate.performance is None:
        return GateResult.from_checks(name, [])
    return performance_gate(policy.performance, candidate.performance)


def release_verdict(
    policy: ReleasePolicy, champion: SuiteReports, candidate: SuiteReports, suites: tuple[str, ...] = SUITES
) -> ReleaseVerdict:
    unknown = set(suites) - set(SUITES)
    if unknown:
        raise ValueError(f"unknown suite(s) {sorted(unknown)}; choose from {list(SUITES)}")
    gates = [_gate(name, policy, champion, candidate) for name in suites]
    return ReleaseVerdict(
        champion_ref=champion.model_ref,
        candidate_ref=candidate.model_ref,
        policy_hash=policy.content_hash,
        outcome=worst([g.outcome for g in gates]),
        gates=gates,
    )


def combine_verdicts(policy: ReleasePolicy, verdicts: list[ReleaseVerdict], skipped: dict[str, str]) -> ReleaseVerdict:
    """One verdict from suites judged one at a time (the release stops at the first gate that
    fails); a suite not run is inconclusive with the reason it was skipped, never a pass."""
    if not verdicts:
        raise ValueError("no suite was evaluated")
    gates = [gate for verdict in verdicts for gate in verdict.gates]
    gates += [GateResult(gate=suite, outcome=Outcome.INCONCLUSIVE, reasons=[f"not run: {why}"]) for suite, why in skipped.items()]
    return ReleaseVerdict(
        champion_ref=verdicts[0].champion_ref,
        candidate_ref=verdicts[0].candidate_ref,
        policy_hash=policy.content_hash,
        outcome=worst([g.outcome for g in gates]),
        gates=gates,
    )
