"""The shadow step's decision: pure, from the paired analysis, the time the step has run and a
person's answer (where the analysis asked for one) to what the controller does next.

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


class ShadowActionKind(StrEnum):
    CONTINUE = "continue"  # keep mirroring and looking
    ASK = "ask"  # hold the step for a person's answer
    PASS = "pass"  # on to the weighted steps (or, blue-green, the switch)
    ROLLBACK = "rollback"


class Review(BaseModel):
    """A person's judgement the shadow step asked for, and the answer once given."""

    model_config = ConfigDict(extra="forbid")

    asked_at: float  # the controller's monotonic clock
    checks: list[str]
    examples: list[str]
    answer: str | None = None  # approve | reject
    by: str | None = None
    comment: str | None = None


class ShadowAction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ShadowActionKind
    reason: str


def _examples(analysis: PairedAnalysis, names: list[str] | None = None) -> str:
    shown = [e for name, examples in analysis.examples.items() if names is None or name in names for e in examples]
    return f"; examples: {' | '.join(shown[:3])}" if shown else ""


def decide_shadow(analysis: PairedAnalysis | None, elapsed_s: float, policy: ShadowPolicy, now: float,
                  review: Review | None = None) -> ShadowAction:
    if analysis is None:
        analysis = PairedAnalysis.from_checks("paired", [])  # nothing read yet: inconclusive
    if analysis.outcome is Outcome.FAIL:
        failed = [c.name for c in analysis.checks if c.outcome is Outcome.FAIL]
        return ShadowAction(kind=ShadowActionKind.ROLLBACK, reason="shadow step failed: " + "; ".join(
            f"{c.name}: {c.detail}" for c in analysis.checks if c.outcome is Outcome.FAIL) + _examples(analysis, failed))
    if review is not None:
        if review.answer == "reject":
            return ShadowAction(kind=ShadowActionKind.ROLLBACK, reason=f"shadow step: {review.by or 'a person'} rejected "
                                f"the discordance ({', '.join(review.checks)}){': ' + review.comment if review.comment else ''}")
        if review.answer is None:
            if now - review.asked_at >= policy.review_timeout_seconds:
                return ShadowAction(kind=ShadowActionKind.ROLLBACK, reason=f"shadow step: no answer from a person "
                                    f"{policy.review_timeout_seconds:g} s after asking about {', '.join(review.checks)}: "
                                    "no answer is no approval")
            return ShadowAction(kind=ShadowActionKind.ASK, reason="waiting for a person: " + ", ".join(review.checks))
        # Approved: the asked-about discordance stands judged; the other checks still decide.
        others = [c for c in analysis.checks if c.name not in review.checks and c.outcome is not Outcome.PASS]
        if analysis.final_look and not others:
            return ShadowAction(kind=ShadowActionKind.PASS, reason=f"shadow step passed over {analysis.pairs} pairs; "
                                f"{review.by or 'a person'} approved {', '.join(review.checks)}")
    elif analysis.review:
        return ShadowAction(kind=ShadowActionKind.ASK, reason="; ".join(
            f"{c.name}: {c.detail}" for c in analysis.checks if c.name in analysis.review) + _examples(analysis, analysis.review))
    if analysis.outcome is Outcome.PASS and analysis.final_look:
        return ShadowAction(kind=ShadowActionKind.PASS, reason=f"shadow step passed: {analysis.pairs} answered pairs "
                            f"({analysis.harmful_pairs} on prompts labelled harmful), every paired check passed")
    if elapsed_s >= policy.deadline_seconds:
        return ShadowAction(kind=ShadowActionKind.ROLLBACK, reason=f"shadow step: no decision {policy.deadline_seconds:g} s "
                            f"in: inconclusive ({'; '.join(analysis.reasons) or 'no pairs'}); no data is never a pass")
    return ShadowAction(kind=ShadowActionKind.CONTINUE, reason="; ".join(analysis.reasons) or "collecting pairs")
