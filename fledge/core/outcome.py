"""Typed outcomes shared by every gate: never a boolean, and "no data" is never a pass."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Outcome(StrEnum):
    PASS = "pass"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"
    FAIL = "fail"

    @property
    def severity(self) -> int:
        # A definitive fail outranks not knowing; not knowing outranks a pass.
        return {"pass": 0, "inconclusive": 1, "error": 2, "fail": 3}[self.value]


def worst(outcomes: list[Outcome]) -> Outcome:
    """The overall outcome: the most severe; nothing measured at all is inconclusive."""
    if not outcomes:
        return Outcome.INCONCLUSIVE
    return max(outcomes, key=lambda o: o.severity)


class Check(BaseModel):
    """One comparison inside a gate: what was measured, against what limit, and what it means."""

    model_config = ConfigDict(extra="forbid")

    name: str
    outcome: Outcome
    measured: float | None = None
    limit: float | None = None
    detail: str


class GateResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gate: str
    outcome: Outcome
    checks: list[Check] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list)

    @classmethod
    def from_checks(cls, gate: str, checks: list[Check]) -> "GateResult":
        outcome = worst([c.outcome for c in checks])
        reasons = [f"{c.name}: {c.detail}" for c in checks if c.outcome is not Outcome.PASS]
        if not checks:
            reasons = ["nothing was measured"]
        return cls(gate=gate, outcome=outcome, checks=checks, reasons=reasons)

    @classmethod
    def error(cls, gate: str, message: str) -> "GateResult":
        return cls(gate=gate, outcome=Outcome.ERROR, reasons=[message])
