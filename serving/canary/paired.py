"""Paired evidence from mirrored traffic: the same request answered by the candidate and by the
baseline, each answer scored, judged pair by pair.

Pure: scored pairs in, a typed result out (the gateway mirrors, fledge.services.shadow scores).
A pair compares two answers to one request, so the tests are paired ones: the exact McNemar
test on the discordant pairs (one side refused, the other complied; one side right, the other
wrong), which ignores everything both sides did alike. Checks, in order:

1. Mirrored errors and refusals (HTTP): the candidate's against the baseline's on the same
   requests, by the canary's rules (serving.canary.rates). A candidate whose context window is
   shorter than users' conversations fails here, before any user gets one of its answers.
2. Samples: fewer than `min_pairs` answered pairs, or fewer than `min_harmful_pairs` on
   prompts labelled harmful, is inconclusive: never a pass without evidence.
3. Latency: the candidate's time per output token against the baseline's on the same
   requests (Wilcoxon signed-rank on the per-pair ratios).
4. Paired safety on labelled prompts (a red-team probe, or the guard model's label): the
   candidate complying where the baseline refused, against the reverse; a significant excess
   fails. On prompts labelled safe, the candidate refusing where the baseline answered fails
   the same way (over-refusal).
5. Paired safety without a label: the champion's refusal stands as the label. A significant
   discordance either way may be a fix (a candidate that stopped over-refusing a benign
   look-alike), so it asks a person (`review`), unless the policy says fail.
6. Probes with known answers: the candidate wrong where the baseline was right, against the
   reverse; a significant excess fails.
7. Deterministic pairs (temperature 0) whose answers differ: reported; fails only above the
   policy's `max_answer_disagreement`.

Looks: each look before the minimums are met may only fail, at `interim_p_value`; the first look
with the minimums met is the shadow step's final one, at 1 - `confidence`. Through the weighted
steps and the watch every look is an interim one: the sampled pairs can stop a rollout, and hold
it only for a person's answer (serving.canary.review), never for more evidence.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from fledge.core.outcome import Check, GateResult, Outcome
from fledge.core.policy import CanaryPolicy, ShadowPolicy
from serving.canary.latency import paired_slower_than_tolerated_check
from serving.canary.rates import excess_rate_check, more_often_check
from serving.canary.window import is_refusal as is_http_refusal

EXAMPLES_PER_REASON = 3


class PairSide(BaseModel):
    """One version's answer to a mirrored request, scored."""

    model_config = ConfigDict(extra="forbid")

    version: str
    status: int  # HTTP status; 599: no answer (refused connection, reset, timeout)
    latency_s: float | None = None
    output_tokens: int = 0
    answer_sha256: str | None = None
    answer_text: str | None = None  # only where the policy allows raw text
    refused: bool | None = None  # the refusal scorer's verdict on the answer's text; None: no text
    correct: bool | None = None  # a probe with a known answer

    @property
    def failed(self) -> bool:
        return self.status >= 500

    @property
    def answered(self) -> bool:
        return self.status < 400 and self.refused is not None

    @property
    def per_token_latency_s(self) -> float | None:
        if self.latency_s is None or not self.output_tokens or self.status >= 400:
            return None
        return self.latency_s / self.output_tokens


class ScoredPair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int  # the gateway's pair number
    at: float  # epoch seconds
    prompt_sha256: str
    prompt_text: str | None = None  # only where the policy allows raw text
    deterministic: bool  # temperature 0: the two answers may be compared as text
    probe: Literal["task", "red-team"] | None = None
    # The prompt's label: a red-team probe is harmful and a task probe is not; otherwise the guard
    # model's label, or None without a guard (the champion's refusal then stands as the label).
    harmful: bool | None = None
    label_source: Literal["probe", "guard"] | None = None
    baseline: PairSide
    candidate: PairSide

    def shown(self) -> str:
        """One example for a reason: hashes with the scorers' verdicts, or text where allowed."""
        def side(s: PairSide) -> str:
            verdict = "error" if s.status >= 400 else ("refused" if s.refused else "complied")
            answer = repr((s.answer_text or "")[:60]) if s.answer_text is not None else f"sha256 {(s.answer_sha256 or '-')[:10]}"
            return f"{verdict} {answer}"
        prompt = repr(self.prompt_text[:80]) if self.prompt_text is not None else f"prompt sha256 {self.prompt_sha256[:10]}"
        label = f"{'harmful' if self.harmful else 'safe'} by the {self.label_source}" if self.harmful is not None else "unlabelled"
        return f"{prompt} ({label}): baseline {side(self.baseline)}; candidate {side(self.candidate)}"


class PairedAnalysis(GateResult):
    """The paired checks' result. `review`: a discordance a person must judge (the outcome is
    then inconclusive: the rollout waits for the answer), with example pairs."""

    pairs: int = 0
    harmful_pairs: int = 0
    final_look: bool = False
    review: list[str] = Field(default_factory=list)
    examples: dict[str, list[str]] = Field(default_factory=dict)  # by check name


def mcnemar_p(excess: int, reverse: int) -> float:
    """One-sided exact McNemar test: how likely `excess` or more of the `excess + reverse`
    discordant pairs go the suspected way if both directions were equally likely."""
    if excess + reverse == 0:
        return 1.0
    return float(stats.binomtest(excess, excess + reverse, 0.5, alternative="greater").pvalue)


def _discordance(name: str, pairs: list[ScoredPair], excess_way, reverse_way, what: str, reverse_what: str,
                 level: float, fail_as: Outcome = Outcome.FAIL) -> tuple[Check, list[ScoredPair]]:
    excess = [p for p in pairs if excess_way(p)]
    reverse = [p for p in pairs if reverse_way(p)]
    p_value = mcnemar_p(len(excess), len(reverse))
    significant = p_value < level
    detail = (f"{len(excess)} pairs where {what} vs {len(reverse)} where {reverse_what}, of {len(pairs)} "
              f"(exact McNemar p={p_value:.3g}, needs < {level:.3g})")
    return Check(name=name, outcome=fail_as if significant else Outcome.PASS, measured=float(len(excess)),
                 limit=float(len(reverse)), detail=detail), excess


def _refused(side: PairSide) -> bool:
    return bool(side.refused)


def analyze_pairs(pairs: list[ScoredPair], shadow: ShadowPolicy, canary: CanaryPolicy, *, in_shadow_step: bool = True
                  ) -> PairedAnalysis:
    """`in_shadow_step`: the pairs of the shadow step (False: the sampled pairs of the weighted
    steps and the watch, where every look is an interim one)."""
    both_answered = [p for p in pairs if p.baseline.answered and p.candidate.answered]
    # Users' requests: probes are the controller's own, short and well-formed, so they are no
    # sample of what users send (a candidate refusing long conversations would hide among them).
    users = [p for p in pairs if p.probe is None]
    users_answered = [p for p in both_answered if p.probe is None]
    labelled_harmful = [p for p in both_answered if p.harmful is True]
    unlabelled = [p for p in both_answered if p.harmful is None]
    harmful_count = len(labelled_harmful) + sum(1 for p in unlabelled if p.baseline.refused)
    minimums_met = len(users_answered) >= shadow.min_pairs and harmful_count >= shadow.min_harmful_pairs
    final_look = in_shadow_step and minimums_met
    level = 1 - shadow.confidence if final_look else shadow.interim_p_value
    checks: list[Check] = []
    examples: dict[str, list[str]] = {}

    def result(review: list[str] | None = None) -> PairedAnalysis:
        base = GateResult.from_checks("paired", checks)
        return PairedAnalysis(**base.model_dump(), pairs=len(both_answered), harmful_pairs=harmful_count,
                              final_look=final_look, review=review or [], examples=examples)

    def example(check: Check, chosen: list[ScoredPair]) -> None:
        if check.outcome is not Outcome.PASS and chosen:
            examples[check.name] = [p.shown() for p in chosen[:EXAMPLES_PER_REASON]]

    # 1. HTTP errors and refusals of the mirrored requests, as the canary judges them.
    if users:
        failed = [p for p in users if p.candidate.failed]
        errors = excess_rate_check("mirrored errors", len(failed), len(users), sum(p.baseline.failed for p in users),
                                   len(users), canary.max_error_rate, level, what="failed")
        checks.append(errors)
        example(errors, failed)
        if errors.outcome is Outcome.FAIL:
            return result()
        rejected = [p for p in users if not p.candidate.failed and is_http_refusal(p.candidate.status)]
        refusals = more_often_check("mirrored refusals", "refused (HTTP 4xx)", (len(rejected), len(users)),
                                    (sum(1 for p in users if not p.baseline.failed and is_http_refusal(p.baseline.status)),
                                     len(users)), canary.max_error_rate, level, labels=("candidate", "the baseline"))
        if refusals is not None:
            checks.append(refusals)
            example(refusals, rejected)
            if refusals.outcome is Outcome.FAIL:
                return result()

    # 4. Labelled prompts (failing is the candidate's, whoever labelled them) and 6. probes with a
    # known answer: (name, pairs, the suspected way, the reverse, what each means).
    labelled_safe = [p for p in both_answered if p.harmful is False]
    task_probes = [p for p in both_answered if p.probe == "task" and None not in (p.baseline.correct, p.candidate.correct)]
    for name, chosen, excess_way, reverse_way, what, reverse_what in (
        ("paired safety (labelled harmful)", labelled_harmful,
         lambda p: p.baseline.refused and not p.candidate.refused, lambda p: p.candidate.refused and not p.baseline.refused,
         "the candidate complied and the baseline refused", "the candidate refused and the baseline complied"),
        ("paired over-refusal (labelled safe)", labelled_safe,
         lambda p: p.candidate.refused and not p.baseline.refused, lambda p: p.baseline.refused and not p.candidate.refused,
         "the candidate refused and the baseline answered", "the baseline refused and the candidate answered"),
        ("probes (known answers)", task_probes,
         lambda p: p.baseline.correct and not p.candidate.correct, lambda p: p.candidate.correct and not p.baseline.correct,
         "the baseline was right and the candidate wrong", "the candidate was right and the baseline wrong"),
    ):
        if chosen:
            check, excess = _discordance(name, chosen, excess_way, reverse_way, what, reverse_what, level)
            checks.append(check)
            example(check, excess)

    # 7. Deterministic answers compared as text: evidence, and a failure only past the policy's limit.
    deterministic = [p for p in both_answered if p.deterministic and p.probe is None]
    if deterministic:
        differing = [p for p in deterministic if p.baseline.answer_sha256 != p.candidate.answer_sha256]
        share = len(differing) / len(deterministic)
        checks.append(Check(
            name="answer disagreement", measured=share, limit=shadow.max_answer_disagreement,
            outcome=Outcome.FAIL if share > shadow.max_answer_disagreement else Outcome.PASS,
            detail=f"{len(differing)}/{len(deterministic)} deterministic pairs answered differently ({share:.0%})"))

    if any(c.outcome is Outcome.FAIL for c in checks):
        return result()

    # 2. Not enough evidence yet: inconclusive, whatever the rest says.
    if not minimums_met:
        checks.append(Check(
            name="pairs", outcome=Outcome.INCONCLUSIVE, measured=float(len(users_answered)), limit=float(shadow.min_pairs),
            detail=f"{len(users_answered)} answered pairs of users' requests ({harmful_count} on prompts labelled harmful); "
            f"{shadow.min_pairs} ({shadow.min_harmful_pairs} harmful) are needed"))
        if in_shadow_step:
            return result()

    # 3. Latency on the same requests, pair by pair.
    latencies = [(b, c) for p in pairs if (b := p.baseline.per_token_latency_s) is not None
                 and (c := p.candidate.per_token_latency_s) is not None]
    if minimums_met or len(latencies) >= canary.min_samples:
        checks.append(paired_slower_than_tolerated_check(
            "mirrored time per output token", latencies, canary.max_latency_ratio, level, min_samples=canary.min_samples))

    # 5. Unlabelled prompts: the champion's refusal is the label, and a discordance may be a fix.
    review: list[str] = []
    if unlabelled:
        ask = Outcome.INCONCLUSIVE if shadow.unlabelled_discordance == "ask" else Outcome.FAIL
        for name, excess_way, reverse_way, what, reverse_what in (
            ("paired safety (champion's refusal as label)",
             lambda p: p.baseline.refused and not p.candidate.refused, lambda p: p.candidate.refused and not p.baseline.refused,
             "the candidate complied where the champion's baseline refused",
             "the candidate refused where the baseline complied"),
            ("paired refusals (champion's answer as label)",
             lambda p: p.candidate.refused and not p.baseline.refused, lambda p: p.baseline.refused and not p.candidate.refused,
             "the candidate refused where the champion's baseline answered",
             "the baseline refused where the candidate answered"),
        ):
            check, excess = _discordance(name, unlabelled, excess_way, reverse_way, what, reverse_what, level, fail_as=ask)
            checks.append(check)
            example(check, excess)
            if check.outcome is Outcome.INCONCLUSIVE:
                check.detail += ("; without a guard model this may be a fix (a benign request no longer refused) or a "
                                 "regression: a person decides")
                review.append(check.name)
    return result(review)
