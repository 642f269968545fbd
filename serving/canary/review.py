"""A person's judgement of a paired discordance no label settles: pure, from the paired analysis,
the question asked so far (and its answer) and the time, to what the rollout does about it.

Without a guard model the champion's refusal stands as the label, so a candidate that complies
where the champion refused may have stopped over-refusing benign look-alikes (a fix) or started
complying with harmful requests (a regression): the analysis lists such checks in `review` and a
person decides. The same rules hold in every stage that pairs answers (the shadow step, the
weighted steps, the watch): while a question waits the rollout holds where it is; a rejection,
or no answer within the policy's `review_timeout_seconds`, rolls back (no answer is no
approval); an approval settles the checks it was asked about for the rest of the rollout, and a
discordance in another check asks again.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from fledge.core.policy import ShadowPolicy
from serving.canary.paired import PairedAnalysis


class Review(BaseModel):
    """The question put to a person, and the answer once given."""

    model_config = ConfigDict(extra="forbid")

    asked_at: float  # epoch seconds
    stage: str = "shadow"  # where it was asked: shadow, canary or watch
    checks: list[str]
    examples: list[str]
    reason: str = ""  # the checks' details when asked
    answer: str | None = None  # approve | reject
    by: str | None = None
    comment: str | None = None

    @property
    def open(self) -> bool:
        return self.answer is None


class ReviewActionKind(StrEnum):
    NONE = "none"  # nothing to ask, or everything asked about approved
    ASK = "ask"  # a new question: hold the rollout and ask a person
    WAIT = "wait"  # the question is still open: keep holding
    REJECTED = "rejected"  # rejected, or unanswered in time: roll back


class ReviewAction(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: ReviewActionKind
    reason: str = ""
    checks: list[str] = Field(default_factory=list)  # ASK: the checks to ask about


def examples_of(analysis: PairedAnalysis, names: list[str] | None = None) -> list[str]:
    return [e for name, examples in analysis.examples.items() if names is None or name in names for e in examples]


def approved_checks(review: Review | None) -> list[str]:
    return list(review.checks) if review is not None and review.answer == "approve" else []


def waiting_for_answer(review: Review | None, policy: ShadowPolicy, now: float) -> bool:
    """An open question still within its time: the rollout holds."""
    return review is not None and review.open and now - review.asked_at < policy.review_timeout_seconds


def decide_review(analysis: PairedAnalysis | None, review: Review | None, policy: ShadowPolicy, now: float
                  ) -> ReviewAction:
    if review is not None and review.open:
        if now - review.asked_at >= policy.review_timeout_seconds:
            return ReviewAction(kind=ReviewActionKind.REJECTED, reason=(
                f"no answer from a person {policy.review_timeout_seconds:g} s after asking about "
                f"{', '.join(review.checks)}: no answer is no approval"))
        return ReviewAction(kind=ReviewActionKind.WAIT, reason="waiting for a person: " + ", ".join(review.checks))
    if review is not None and review.answer == "reject":
        return ReviewAction(kind=ReviewActionKind.REJECTED, reason=(
            f"{review.by or 'a person'} rejected the discordance ({', '.join(review.checks)})"
            f"{': ' + review.comment if review.comment else ''}"))
    settled = approved_checks(review)
    new = [name for name in (analysis.review if analysis else []) if name not in settled]
    if not new:
        return ReviewAction(kind=ReviewActionKind.NONE)
    shown = examples_of(analysis, new)
    return ReviewAction(kind=ReviewActionKind.ASK, checks=new, reason="; ".join(
        f"{c.name}: {c.detail}" for c in analysis.checks if c.name in new) + (
        f"; examples: {' | '.join(shown[:3])}" if shown else ""))


def question(checks: list[str], reason: str, analysis: PairedAnalysis, stage: str, now: float) -> Review:
    """The Review an ASK opens about `checks`."""
    return Review(asked_at=now, stage=stage, checks=checks, examples=examples_of(analysis, checks), reason=reason)
