"""The release policy: every threshold Fledge decides with, typed, loaded from YAML.

`extra="forbid"` everywhere, so a misspelt key is an error rather than a silently ignored
default. The policy's content hash (of its parsed, canonical form: comments and key order do
not count) is recorded with every result it produced.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fledge.core.errors import FledgeError

DEFAULT_POLICY_PATH = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QualityGate(_Strict):
    tasks: list[str] = Field(min_length=1, description="lm-eval task names shipped in evals/tasks.")
    margin: float = Field(ge=0, le=1, description="Largest tolerated drop in a task's metric vs the champion.")
    confidence: float = Field(gt=0.5, lt=1)
    min_samples: int = Field(ge=1, description="Fewer samples per task than this is inconclusive.")


class SafetyGate(_Strict):
    max_harmful_compliance: float = Field(ge=0, le=1, description="Absolute limit on complying with harmful requests.")
    max_over_refusal: float = Field(ge=0, le=1, description="Absolute limit on refusing benign look-alikes.")
    no_worse_margin: float = Field(ge=0, le=1, description="Tolerated increase of either rate vs the champion.")
    confidence: float = Field(gt=0.5, lt=1)
    min_samples: int = Field(ge=1)
    max_new_tokens: int = Field(gt=0)


class PerformanceGate(_Strict):
    metric: Literal["tpot", "e2e_latency", "ttft"] = Field(description="Per-request metric the gate compares.")
    tolerated_slowdown: float = Field(ge=0, description="0.2: the candidate may be up to 20 % slower.")
    blocks: int = Field(ge=2, description="Alternating blocks per endpoint.")
    max_blocks: int = Field(ge=2, description="When the first `blocks` leave the gate inconclusive, measure up to this many.")
    requests_per_block: int = Field(ge=1)
    max_tokens: int = Field(gt=0)
    confidence: float = Field(gt=0.5, lt=1)
    bootstrap_resamples: int = Field(ge=100)
    max_ci_width: float = Field(gt=0, description="A wider confidence interval of the ratio is inconclusive (noise).")
    max_error_rate: float = Field(ge=0, le=1)
    interim_blocks: int | None = Field(None, ge=2, description=(
        "Look once after this many blocks (even: as many champion-first blocks as candidate-first) and stop "
        "when the gate is decided at `interim_confidence`; None: no interim look."))
    interim_confidence: float = Field(0.995, gt=0.5, lt=1, description=(
        "The interim look's confidence: O'Brien-Fleming's boundary for two looks (0.995, then about 0.95), "
        "so looking early barely changes the gate's error rates."))

    @model_validator(mode="after")
    def _interim_look_before_the_end(self) -> "PerformanceGate":
        if self.interim_blocks is not None and (self.interim_blocks >= self.blocks or self.interim_blocks % 2):
            raise ValueError(f"interim_blocks ({self.interim_blocks}) must be even and fewer than blocks ({self.blocks})")
        return self


class QuantizationPolicy(_Strict):
    scheme: Literal["none", "w8a8-int8", "w4a16", "w4a16-gptq", "fp8-dynamic"]
    quality_margin: float = Field(ge=0, le=1, description="Tolerated task-metric drop vs the unquantized source.")
    min_logprob_agreement: float = Field(
        ge=0, le=1, description="Share of prompts whose next-token top-1 agrees with the source."
    )
    max_logprob_mae: float = Field(ge=0, description="Mean absolute prompt-token log-probability difference (nats).")
    max_logprob_max_abs: float = Field(ge=0, description="Largest single prompt-token log-probability difference (nats).")


class CanaryPolicy(_Strict):
    strategy: Literal["canary", "blue-green"] = Field("canary", description=(
        "canary: the steps below, each judged against the baseline. blue-green: once the candidate has passed "
        "the shadow step (and so has served mirrored traffic), all traffic switches at once; the old version "
        "stays ready at 0 % through the watch and takes the traffic back on a breach."))
    steps: list[int] = Field(min_length=1, description="Canary traffic percentages, in order, ending at 100.")
    bake_seconds: float = Field(gt=0)
    analysis_interval_seconds: float = Field(gt=0)
    min_samples: int = Field(ge=1, description="Per version per window; fewer is inconclusive.")
    max_error_rate: float = Field(ge=0, le=1, description=(
        "A canary whose error rate is confidently above this (or above the baseline's) fails at once."))
    ruled_out_error_rate: float = Field(0.10, gt=0, le=1, description=(
        "A canary passes the error check only once an error rate this high is ruled out at the policy's "
        "confidence (0.10 at 0.95: 29 requests without a failure, 46 with one)."))
    max_latency_ratio: float = Field(ge=1, description="Canary/stable latency ratio above which it fails.")
    confidence: float = Field(gt=0.5, lt=1, description="Latency checks at the look that ends a step's bake.")
    interim_p_value: float = Field(
        gt=0, lt=0.5,
        description="Latency checks at the looks before a step has baked must reach this p-value to fail.",
    )
    max_inconclusive_windows: int = Field(ge=1)
    baseline_instance: bool = Field(description=(
        "Judge the canary against a second instance of the stable version started with it (one more "
        "server during the canary) instead of the instance that has served production all along."))
    progress_deadline_seconds: float = Field(120, gt=0, description=(
        "The longest a rollout may stay in one step without a decision (inconclusive windows, the "
        "gateway or a backend unreachable): past it, it rolls back."))

    @field_validator("ruled_out_error_rate")
    @classmethod
    def _above_the_limit(cls, ruled_out: float, info) -> float:
        limit = info.data.get("max_error_rate")
        if limit is not None and ruled_out <= limit:
            raise ValueError(f"ruled_out_error_rate {ruled_out:g} must be above max_error_rate {limit:g}: it is the "
                             "rate a passing canary is shown not to have (e.g. twice the limit)")
        return ruled_out

    @field_validator("progress_deadline_seconds")
    @classmethod
    def _longer_than_the_bake(cls, deadline: float, info) -> float:
        bake = info.data.get("bake_seconds")
        if bake is not None and deadline <= bake:
            raise ValueError(f"progress_deadline_seconds {deadline:g} must be longer than bake_seconds {bake:g}: "
                             "a step needs its bake before it can be decided")
        return deadline

    @field_validator("steps")
    @classmethod
    def _increasing_to_100(cls, steps: list[int]) -> list[int]:
        if any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)) or steps[-1] != 100:
            raise ValueError("steps must be strictly increasing percentages in (0, 100] ending at 100, e.g. [5, 25, 50, 100]")
        return steps

    @field_validator("interim_p_value")
    @classmethod
    def _stricter_than_the_final_look(cls, interim: float, info) -> float:
        confidence = info.data.get("confidence")
        if confidence is not None and interim > 1 - confidence:
            raise ValueError(f"interim_p_value {interim} must not exceed the final look's level 1 - confidence "
                             f"= {1 - confidence:.3g}: early looks are the stricter ones (e.g. 0.001)")
        return interim


class GuardPolicy(_Strict):
    """A guard model that labels prompts harmful or safe, served behind any OpenAI-compatible
    endpoint (vLLM serving a guard, a hosted moderation model behind a shim)."""

    base_url: str = Field(description="OpenAI base URL of the guard's server, ending in /v1.")
    model: str = Field(description="The guard's served model name.")
    api_key_env: str | None = Field(None, description="Environment variable holding the guard's API key, if it needs one.")
    prompt_template: str = Field(
        "Q: Is this request harmful? {prompt}\nA:",
        description="How the prompt is put to the guard; {prompt} is replaced by the user's prompt.")
    harmful_answers: list[str] = Field(["yes", "harmful", "unsafe"], min_length=1, description=(
        "The guard's answer (its first word, lower-cased) that labels the prompt harmful; any other is safe."))
    timeout_seconds: float = Field(10, gt=0)


class ShadowPolicy(_Strict):
    """Live traffic mirrored to the candidate and to the baseline, scored in pairs: a shadow step
    before users see the candidate, and a sampled share through the canary's steps and the watch."""

    enabled: bool = Field(description="Run the shadow step before the canary's first weighted step.")
    mirror_share: float = Field(gt=0, le=1, description="Share of live requests mirrored during the shadow step.")
    sampled_share: float = Field(ge=0, le=1, description=(
        "Share of live requests mirrored during the weighted steps and the watch, whichever version answers."))
    max_in_flight: int = Field(1, ge=1, description=(
        "Mirrored requests at once per backend; a request that would exceed it is not mirrored, so mirrored "
        "load never queues behind itself and never delays users."))
    mirror_max_tokens: int = Field(256, ge=1, description=(
        "Mirrored requests' max_tokens is capped at this (both sides alike, so the pair stays comparable): "
        "a user's long generation is not paid for twice more."))
    min_pairs: int = Field(ge=1, description="Scored pairs the shadow step needs before it can pass.")
    min_harmful_pairs: int = Field(ge=1, description=(
        "Pairs on prompts labelled harmful (by the guard, a red-team probe, or the champion's refusal) needed "
        "before paired safety can pass: fewer is inconclusive, never a pass."))
    deadline_seconds: float = Field(gt=0, description=(
        "The shadow step's longest run; without a decision by then it is inconclusive and the rollout rolls back."))
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Paired tests at the look that ends the shadow step.")
    interim_p_value: float = Field(0.001, gt=0, lt=0.5, description="Paired tests at every earlier look.")
    max_answer_disagreement: float = Field(1.0, ge=0, le=1, description=(
        "Share of deterministic (temperature 0) pairs whose answers differ above which the step fails; 1.0: "
        "reported only. A candidate is expected to answer differently; this catches one that answers nothing alike."))
    unlabelled_discordance: Literal["ask", "fail"] = Field("ask", description=(
        "Without a guard, the champion's refusal is the label: a candidate that complies where the champion "
        "refused may have stopped over-refusing. 'ask': pause for a person; 'fail': roll back."))
    review_timeout_seconds: float = Field(600, gt=0, description="No answer from a person in this time rolls back.")
    probe_share: float = Field(ge=0, le=1, description=(
        "Probe requests (known answers, red-team requests) sent through the gateway per live request, in every "
        "step; they go to candidate and baseline and never count in the users' figures."))
    probe_set: str = Field("probes.jsonl", description="File in the evaluation data folder holding the probes.")
    guard: GuardPolicy | None = Field(None, description="A guard model labelling prompts; none: see unlabelled_discordance.")
    store_raw_text: bool = Field(False, description=(
        "Keep prompts and answers as text in the evidence (timeline, reasons, MLflow traces); otherwise as sha256."))
    trace_pairs: int = Field(50, ge=0, description="Scored pairs logged as MLflow traces per rollout (a retention limit).")
    trace_retention_days: int = Field(30, ge=1, description="Traces older than this are deleted at the next rollout's logging.")

    @field_validator("interim_p_value")
    @classmethod
    def _stricter_than_the_final_look(cls, interim: float, info) -> float:
        confidence = info.data.get("confidence")
        if confidence is not None and interim > 1 - confidence:
            raise ValueError(f"interim_p_value {interim} must not exceed 1 - confidence = {1 - confidence:.3g}")
        return interim


class ApprovalPolicy(_Strict):
    required: bool
    approvers: list[str] = Field(description="Who may approve; empty means anyone.")
    timeout_seconds: float = Field(gt=0, description="No answer within this time rejects.")


class WatchPolicy(_Strict):
    window_seconds: float = Field(gt=0)
    min_samples: int = Field(ge=1, description="Fewer requests to the new champion in the window is inconclusive.")
    max_error_rate: float = Field(ge=0, le=1)
    max_ttft_p95_ms: float = Field(gt=0)
    max_itl_p95_ms: float = Field(gt=0)
    max_ratio_vs_previous: float = Field(ge=1)
    confidence: float = Field(0.95, gt=0.5, lt=1, description="The error rule's level when the window closes.")
    interim_p_value: float = Field(0.001, gt=0, lt=0.5, description=(
        "The error rule's level at the looks while the window runs (the watch looks every analysis interval)."))


class GatewayPolicy(_Strict):
    """What the gateway accepts and how it protects itself and its backends."""

    max_body_bytes: int = Field(1_048_576, ge=1024, description="A larger request body is refused with 413.")
    max_json_depth: int = Field(32, ge=2, description="Deeper nesting of the request's JSON is refused with 400.")
    max_json_values: int = Field(100_000, ge=10, description="More values (objects, arrays, scalars) is refused with 400.")
    max_concurrency: int = Field(256, ge=1, description=(
        "Client requests the gateway serves at once; one more is answered 503 with Retry-After."))
    connections_per_backend: int = Field(64, ge=1, description=(
        "Each backend has its own connection pool, so one saturated backend never starves the others."))
    retry_budget: float = Field(0.2, ge=0, le=1, description=(
        "Retries on the stable version are at most this share of requests (plus a reserve of `retry_reserve`), "
        "so a failing canary cannot double stable's load."))
    retry_reserve: int = Field(10, ge=0, description="Retries allowed before any request paid into the budget.")
    eject_after_failures: int = Field(3, ge=1, description=(
        "A backend that fails this many requests in a row (5xx, broken streams) is ejected from the split; a "
        "refused connection ejects at once (Envoy's outlier detection)."))
    ejection_seconds: float = Field(10, gt=0, description="How long an ejected backend stays out before it is tried again.")


class LoraPolicy(_Strict):
    enabled: bool = Field(False, description="Start every server of the model with LoRA enabled, so adapters are "
                          "released onto the running base (loaded at run time) instead of starting servers.")
    max_rank: int = Field(16, ge=1, description="The largest adapter rank the servers accept (vLLM's --max-lora-rank).")
    max_loras: int = Field(2, ge=1, description="Adapters one server holds at once: the champion's and a candidate's.")
    max_latency_ratio: float = Field(
        1.3, ge=1, description="How many times as slow as its base an adapter's requests may be (they run LoRA's "
        "extra matmuls on the base's server): the performance gate, the canary and the watch judge an adapter "
        "release by this instead of their own latency limits.")
    target_modules: list[str] | None = Field(
        None, description="The layers adapters may change, in vLLM's names (--lora-target-modules); None: all vLLM "
        "supports, lm_head included.")


class ServingPolicy(_Strict):
    dtype: Literal["auto", "float32", "bfloat16", "float16"]
    max_model_len: int = Field(gt=0)
    kv_cache_gib: float = Field(gt=0)
    startup_timeout_seconds: float = Field(gt=0)
    keep_staging_copy: bool = Field(
        True, description="After a release that leaves the champion as it was (rejected, rolled back), keep the "
        "champion's staging copy running with no traffic, so the next release against it starts one server fewer.")
    lora: LoraPolicy = Field(default_factory=LoraPolicy)
    gateway: GatewayPolicy = Field(default_factory=GatewayPolicy)


class SchedulePolicy(_Strict):
    release_watch_cron: str


class ReleasePolicy(_Strict):
    version: Literal[1]
    serving: ServingPolicy
    quality: QualityGate
    safety: SafetyGate
    performance: PerformanceGate
    quantization: QuantizationPolicy
    shadow: ShadowPolicy
    canary: CanaryPolicy
    approval: ApprovalPolicy
    watch: WatchPolicy
    schedule: SchedulePolicy

    @property
    def content_hash(self) -> str:
        return self.sections_hash(*type(self).model_fields)

    @property
    def evaluation_hash(self) -> str:
        """Of the sections an evaluation's result depends on: changing the canary or approval
        settings does not make a finished evaluation stale."""
        return self.sections_hash("serving", "quality", "safety", "performance")

    def for_adapter(self) -> "ReleasePolicy":
        """The policy an adapter release is judged by: its requests run LoRA's extra matmuls on
        the base's own server, so the performance gate, the canary's latency check and the
        watch's comparison with the previous champion all take `serving.lora.max_latency_ratio`."""
        ratio = self.serving.lora.max_latency_ratio
        return self.model_copy(update={
            "performance": self.performance.model_copy(update={"tolerated_slowdown": ratio - 1}),
            "canary": self.canary.model_copy(update={"max_latency_ratio": ratio}),
            "watch": self.watch.model_copy(update={"max_ratio_vs_previous": ratio}),
        })

    @model_validator(mode="after")
    def _blue_green_needs_the_shadow_step(self) -> "ReleasePolicy":
        if self.canary.strategy == "blue-green" and not self.shadow.enabled:
            raise ValueError("canary.strategy blue-green switches all traffic at once: it needs the shadow step "
                             "(shadow.enabled: true) to have judged the candidate on mirrored traffic first")
        return self

    def sections_hash(self, *sections: str) -> str:
        payload = self.model_dump(mode="json", include=set(sections))
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class PolicyError(FledgeError):
    """A policy file that cannot be used; the message names each bad field and what it allows."""


def _describe(error: dict) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown field (check the spelling against policies/default.yaml)"
    if error["type"] == "missing":
        return f"{where}: required field is missing"
    return f"{where}: {error['msg']} (got {error.get('input')!r})"


def load_policy(path: Path | str | None = None) -> ReleasePolicy:
    path = Path(path) if path else DEFAULT_POLICY_PATH
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise PolicyError(f"Policy file {path} does not exist; start from {DEFAULT_POLICY_PATH}.") from None
    except yaml.YAMLError as error:
        raise PolicyError(f"Policy file {path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise PolicyError(f"Policy file {path} must be a YAML mapping; see {DEFAULT_POLICY_PATH}.")
    try:
        return ReleasePolicy.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(_describe(e) for e in error.errors())
        raise PolicyError(f"Policy file {path} is invalid: {problems}.") from None
