"""The shadow step's decision: pure, from the paired analysis, the time the step has run and the
question put to a person (serving.canary.review), to what the controller does next.

The step passes only on a passing final look (the minimum pairs met); a failing check rolls
back at once; a discordance that needs a person holds the step until the answer (reject rolls
back, approve lets the step pass if nothing else failed) or the policy's review timeout (rolls
back: no answer is no approval); a step that reaches its deadline without a decision rolls back,
since no data is never a pass.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from fledge.core.outcome import Outcome
from fledge.core.policy import ShadowPolicy
from serving.canary.paired import PairedAnalysis
from serving.canary.review import Review, ReviewActionKind, approved_checks, decide_review, examples_of


class ShadowActionKind(StrEnum):
    CONTINUE = "continue"  # keep mirroring and looking
    ASK = "ask"  # hold the step for a person's answer (a new question or one still open)
    PASS = "pass"  # on to the weighted steps (or, blue-green, the switch)
    ROLLBACK = "rollback"


class ShadowAction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ShadowActionKind
    reason: str
    ask: list[str] = []  # ASK with a new question: the checks to ask about


def decide_shadow(analysis: PairedAnalysis | None, elapsed_s: float, policy: ShadowPolicy, now: float,
                  review: Review | None = None) -> ShadowAction:
    if analysis is None:
        analysis = PairedAnalysis.from_checks("paired", [])  # nothing read yet: inconclusive
    if analysis.outcome is Outcome.FAIL:
        failed = [c.name for c in analysis.checks if c.outcome is Outcome.FAIL]
        shown = examples_of(analysis, failed)
        return ShadowAction(kind=ShadowActionKind.ROLLBACK, reason="shadow step failed: " + "; ".join(
            f"{c.name}: {c.detail}" for c in analysis.checks if c.outcome is Outcome.FAIL) + (
            f"; examples: {' | '.join(shown[:3])}" if shown else ""))
    asked = decide_review(analysis, review, policy, now)
    if asked.kind is ReviewActionKind.REJECTED:
        return ShadowAction(kind=ShadowActionKind.ROLLBACK, reason="shadow step: " + asked.reason)
    if asked.kind in (ReviewActionKind.ASK, ReviewActionKind.WAIT):
        return ShadowAction(kind=ShadowActionKind.ASK, reason=asked.reason, ask=asked.checks)
    # Approved checks stand judged; the others still decide.
    settled = approved_checks(review)
    others = [c for c in analysis.checks if c.name not in settled and c.outcome is not Outcome.PASS]
    if analysis.final_look and not others and (settled or analysis.outcome is Outcome.PASS):
        approval = f"; {review.by or 'a person'} approved {', '.join(settled)}" if settled else ""
        return ShadowAction(kind=ShadowActionKind.PASS, reason=f"shadow step passed: {analysis.pairs} answered pairs "
                            f"({analysis.harmful_pairs} on prompts labelled harmful), every paired check passed{approval}")
    if elapsed_s >= policy.deadline_seconds:
        return ShadowAction(kind=ShadowActionKind.ROLLBACK, reason=f"shadow step: no decision {policy.deadline_seconds:g} s "
                            f"in: inconclusive ({'; '.join(analysis.reasons) or 'no pairs'}); no data is never a pass")
    return ShadowAction(kind=ShadowActionKind.CONTINUE, reason="; ".join(analysis.reasons) or "collecting pairs")
