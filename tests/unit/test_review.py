"""A person's judgement of an unlabelled paired discordance (serving.canary.review) and the shadow
step's decision on top of it (serving.canary.shadow_step), table-tested without servers."""

from test_paired_analysis import CANARY, SHADOW, traffic

from serving.canary.paired import analyze_pairs
from serving.canary.review import Review, ReviewActionKind, decide_review, question, waiting_for_answer
from serving.canary.shadow_step import ShadowActionKind, decide_shadow

ASKED = "paired safety (champion's refusal as label)"
DISCORDANT = analyze_pairs(traffic(candidate_complies_with_harmful=10), SHADOW, CANARY)
ALIKE = analyze_pairs(traffic(), SHADOW, CANARY)
NOW = 10_000.0


def review(answer=None, asked_at=NOW, by="oncall"):
    return Review(asked_at=asked_at, stage="canary", checks=[ASKED], examples=[], answer=answer,
                  by=by if answer else None)


def test_a_discordance_no_label_settles_asks_once_then_waits_and_no_answer_in_time_rejects():
    asked = decide_review(DISCORDANT, None, SHADOW, NOW)
    assert asked.kind is ReviewActionKind.ASK and asked.checks == [ASKED] and "exact McNemar" in asked.reason
    opened = question(asked.checks, asked.reason, DISCORDANT, "canary", NOW)
    assert opened.examples and waiting_for_answer(opened, SHADOW, NOW + 1)
    assert decide_review(DISCORDANT, opened, SHADOW, NOW + 1).kind is ReviewActionKind.WAIT
    late = NOW + SHADOW.review_timeout_seconds
    timed_out = decide_review(DISCORDANT, opened, SHADOW, late)
    assert timed_out.kind is ReviewActionKind.REJECTED and "no answer is no approval" in timed_out.reason
    assert not waiting_for_answer(opened, SHADOW, late)
    assert decide_review(ALIKE, None, SHADOW, NOW).kind is ReviewActionKind.NONE


def test_an_approval_settles_its_checks_for_the_rest_of_the_rollout_and_a_rejection_rolls_back():
    assert decide_review(DISCORDANT, review("approve"), SHADOW, NOW + 10_000).kind is ReviewActionKind.NONE
    rejected = decide_review(DISCORDANT, review("reject"), SHADOW, NOW)
    assert rejected.kind is ReviewActionKind.REJECTED and "oncall rejected" in rejected.reason
    # A discordance in a check nobody was asked about asks again.
    other = DISCORDANT.model_copy(update={"review": [ASKED, "paired refusals (champion's answer as label)"]})
    again = decide_review(other, review("approve"), SHADOW, NOW)
    assert again.kind is ReviewActionKind.ASK and again.checks == ["paired refusals (champion's answer as label)"]


def test_the_shadow_step_asks_holds_and_passes_only_with_the_approval_and_everything_else_passing():
    assert decide_shadow(DISCORDANT, 1.0, SHADOW, NOW).ask == [ASKED]
    holding = decide_shadow(DISCORDANT, SHADOW.deadline_seconds * 2, SHADOW, NOW, review())
    assert holding.kind is ShadowActionKind.ASK and not holding.ask  # waiting: no new question, no deadline
    approved = decide_shadow(DISCORDANT, 1.0, SHADOW, NOW, review("approve"))
    assert approved.kind is ShadowActionKind.PASS and "oncall approved" in approved.reason
    assert decide_shadow(DISCORDANT, 1.0, SHADOW, NOW, review("reject")).kind is ShadowActionKind.ROLLBACK
    assert decide_shadow(ALIKE, 1.0, SHADOW, NOW).kind is ShadowActionKind.PASS
    # No pairs by the deadline: inconclusive, rolled back, never passed.
    empty = decide_shadow(None, SHADOW.deadline_seconds, SHADOW, NOW)
    assert empty.kind is ShadowActionKind.ROLLBACK and "no data is never a pass" in empty.reason
