"""The release policy: every threshold Fledge decides with, typed, loaded from YAML.

`extra="forbid"` everywhere, so a misspelt key is an error rather than a silently ignored
default. The policy's content hash (of its parsed, canonical form: comments and key order do
not count) is recorded with every result it produced.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fledge.core.directions import ADDING, CHANGING, DISABLING, DROPPING, ENABLING, LOWERING, NEVER, RAISING, require_directions
from fledge.core.errors import FledgeError
from fledge.core.credentials import parse_public_key

DEFAULT_POLICY_PATH = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        require_directions(cls)  # fledge.core.overrides judges every field by it


class QualityGate(_Strict):
    tasks: Annotated[list[str], DROPPING] = Field(min_length=1, description="lm-eval task names shipped in evals/tasks.")
    margin: Annotated[float, RAISING] = Field(ge=0, le=1, description="Largest tolerated drop in a task's metric vs the champion.")
    confidence: Annotated[float, LOWERING] = Field(gt=0.5, lt=1)
    min_samples: Annotated[int, LOWERING] = Field(ge=1, description="Fewer samples per task than this is inconclusive.")


class SafetyGate(_Strict):
    max_harmful_compliance: Annotated[float, RAISING] = Field(ge=0, le=1, description="Absolute limit on complying with harmful requests.")
    max_over_refusal: Annotated[float, RAISING] = Field(ge=0, le=1, description="Absolute limit on refusing benign look-alikes.")
    no_worse_margin: Annotated[float, RAISING] = Field(ge=0, le=1, description="Tolerated increase of either rate vs the champion.")
    confidence: Annotated[float, LOWERING] = Field(gt=0.5, lt=1)
    min_samples: Annotated[int, LOWERING] = Field(ge=1)
    max_new_tokens: Annotated[int, LOWERING] = Field(gt=0)


class PerformanceGate(_Strict):
    metric: Annotated[Literal["tpot", "e2e_latency", "ttft"], CHANGING] = Field(description="Per-request metric the gate compares.")
    tolerated_slowdown: Annotated[float, RAISING] = Field(ge=0, description="0.2: the candidate may be up to 20 % slower.")
    blocks: Annotated[int, LOWERING] = Field(ge=2, description="Alternating blocks per endpoint.")
    max_blocks: Annotated[int, LOWERING] = Field(ge=2, description="When the first `blocks` leave the gate inconclusive, measure up to this many.")
    requests_per_block: Annotated[int, LOWERING] = Field(ge=1)
    max_tokens: Annotated[int, LOWERING] = Field(gt=0)
    confidence: Annotated[float, LOWERING] = Field(gt=0.5, lt=1)
    bootstrap_resamples: Annotated[int, LOWERING] = Field(ge=100)
    max_ci_width: Annotated[float, RAISING] = Field(gt=0, description="A wider confidence interval of the ratio is inconclusive (noise).")
    max_error_rate: Annotated[float, RAISING] = Field(ge=0, le=1)
    interim_blocks: Annotated[int | None, CHANGING] = Field(None, ge=2, description=(
        "Look once after this many blocks (even: as many champion-first blocks as candidate-first) and stop "
        "when the gate is decided at `interim_confidence`; None: no interim look."))
    interim_confidence: Annotated[float, LOWERING] = Field(0.995, gt=0.5, lt=1, description=(
        "The interim look's confidence: O'Brien-Fleming's boundary for two looks (0.995, then about 0.95), "
        "so looking early barely changes the gate's error rates."))

    @model_validator(mode="after")
    def _interim_look_before_the_end(self) -> "PerformanceGate":
        if self.interim_blocks is not None and (self.interim_blocks >= self.blocks or self.interim_blocks % 2):
            raise ValueError(f"interim_blocks ({self.interim_blocks}) must be even and fewer than blocks ({self.blocks})")
        return self


class QuantizationPolicy(_Strict):
    scheme: Annotated[Literal["none", "w8a8-int8", "w4a16", "w4a16-gptq", "fp8-dynamic"], CHANGING]
    quality_margin: Annotated[float, RAISING] = Field(ge=0, le=1, description="Tolerated task-metric drop vs the unquantized source.")
    min_logprob_agreement: Annotated[float, LOWERING] = Field(
        ge=0, le=1, description="Share of prompts whose next-token top-1 agrees with the source."
    )
    max_logprob_mae: Annotated[float, RAISING] = Field(ge=0, description="Mean absolute prompt-token log-probability difference (nats).")
    max_logprob_max_abs: Annotated[float, RAISING] = Field(ge=0, description="Largest single prompt-token log-probability difference (nats).")


class CanaryPolicy(_Strict):
    strategy: Annotated[Literal["canary", "blue-green"], CHANGING] = Field("canary", description=(
        "canary: the steps below, each judged against the baseline. blue-green: once the candidate has passed "
        "the shadow step (and so has served mirrored traffic), all traffic switches at once; the old version "
        "stays ready at 0 % through the watch and takes the traffic back on a breach."))
    steps: Annotated[list[int], CHANGING] = Field(min_length=1, description="Canary traffic percentages, in order, ending at 100.")
    bake_seconds: Annotated[float, LOWERING] = Field(gt=0)
    analysis_interval_seconds: Annotated[float, RAISING] = Field(gt=0)
    min_samples: Annotated[int, LOWERING] = Field(ge=1, description="Per version per window; fewer is inconclusive.")
    max_error_rate: Annotated[float, RAISING] = Field(ge=0, le=1, description=(
        "A canary whose error rate is confidently above this (or above the baseline's) fails at once."))
    ruled_out_error_rate: Annotated[float, RAISING] = Field(0.10, gt=0, le=1, description=(
        "A canary passes the error check only once an error rate this high is ruled out at the policy's "
        "confidence (0.10 at 0.95: 29 requests without a failure, 46 with one)."))
    max_latency_ratio: Annotated[float, RAISING] = Field(ge=1, description="Canary/stable latency ratio above which it fails.")
    confidence: Annotated[float, LOWERING] = Field(gt=0.5, lt=1, description="Latency checks at the look that ends a step's bake.")
    interim_p_value: Annotated[float, RAISING] = Field(
        gt=0, lt=0.5,
        description="Latency checks at the looks before a step has baked must reach this p-value to fail.",
    )
    max_inconclusive_windows: Annotated[int, RAISING] = Field(ge=1)
    baseline_instance: Annotated[bool, DISABLING] = Field(description=(
        "Judge the canary against a second instance of the stable version started with it (one more "
        "server during the canary) instead of the instance that has served production all along."))
    progress_deadline_seconds: Annotated[float, RAISING] = Field(120, gt=0, description=(
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

    base_url: Annotated[str, CHANGING] = Field(description="OpenAI base URL of the guard's server, ending in /v1.")
    model: Annotated[str, CHANGING] = Field(description="The guard's served model name.")
    api_key_env: Annotated[str | None, CHANGING] = Field(None, description="Environment variable holding the guard's API key, if it needs one.")
    prompt_template: Annotated[str, CHANGING] = Field(
        "Q: Is this request harmful? {prompt}\nA:",
        description="How the prompt is put to the guard; {prompt} is replaced by the user's prompt.")
    harmful_answers: Annotated[list[str], CHANGING] = Field(["yes", "harmful", "unsafe"], min_length=1, description=(
        "The guard's answer (its first word, lower-cased) that labels the prompt harmful; any other is safe."))
    timeout_seconds: Annotated[float, NEVER] = Field(10, gt=0)


class ShadowPolicy(_Strict):
    """Live traffic mirrored to the candidate and to the baseline, scored in pairs: a shadow step
    before users see the candidate, and a sampled share through the canary's steps and the watch."""

    enabled: Annotated[bool, DISABLING] = Field(description="Run the shadow step before the canary's first weighted step.")
    mirror_share: Annotated[float, LOWERING] = Field(gt=0, le=1, description="Share of live requests mirrored during the shadow step.")
    sampled_share: Annotated[float, LOWERING] = Field(ge=0, le=1, description=(
        "Share of live requests mirrored during the weighted steps and the watch, whichever version answers."))
    max_in_flight: Annotated[int, NEVER] = Field(1, ge=1, description=(
        "Mirrored requests at once per backend; a request that would exceed it is not mirrored, so mirrored "
        "load never queues behind itself and never delays users."))
    mirror_max_tokens: Annotated[int, LOWERING] = Field(256, ge=1, description=(
        "Mirrored requests' max_tokens is capped at this (both sides alike, so the pair stays comparable): "
        "a user's long generation is not paid for twice more."))
    min_pairs: Annotated[int, LOWERING] = Field(ge=1, description="Scored pairs the shadow step needs before it can pass.")
    min_harmful_pairs: Annotated[int, LOWERING] = Field(ge=1, description=(
        "Pairs on prompts labelled harmful (by the guard, a red-team probe, or the champion's refusal) needed "
        "before paired safety can pass: fewer is inconclusive, never a pass."))
    deadline_seconds: Annotated[float, NEVER] = Field(gt=0, description=(
        "The shadow step's longest run; without a decision by then it is inconclusive and the rollout rolls back."))
    confidence: Annotated[float, LOWERING] = Field(0.95, gt=0.5, lt=1, description="Paired tests at the look that ends the shadow step.")
    interim_p_value: Annotated[float, RAISING] = Field(0.001, gt=0, lt=0.5, description="Paired tests at every earlier look.")
    max_answer_disagreement: Annotated[float, RAISING] = Field(1.0, ge=0, le=1, description=(
        "Share of deterministic (temperature 0) pairs whose answers differ above which the step fails; 1.0: "
        "reported only. A candidate is expected to answer differently; this catches one that answers nothing alike."))
    unlabelled_discordance: Annotated[Literal["ask", "fail"], CHANGING] = Field("ask", description=(
        "Without a guard, the champion's refusal is the label: a candidate that complies where the champion "
        "refused may have stopped over-refusing. 'ask': pause for a person; 'fail': roll back."))
    review_timeout_seconds: Annotated[float, NEVER] = Field(600, gt=0, description="No answer from a person in this time rolls back.")
    probe_share: Annotated[float, LOWERING] = Field(ge=0, le=1, description=(
        "Probe requests (known answers, red-team requests) sent through the gateway per live request, in every "
        "step; they go to candidate and baseline and never count in the users' figures."))
    probe_set: Annotated[str, CHANGING] = Field("probes.jsonl", description="File in the evaluation data folder holding the probes.")
    guard: Annotated[GuardPolicy | None, CHANGING] = Field(None, description="A guard model labelling prompts; none: see unlabelled_discordance.")
    store_raw_text: Annotated[bool, ENABLING] = Field(False, description=(
        "Keep prompts and answers as text in the evidence (timeline, reasons, MLflow traces); otherwise as sha256."))
    trace_pairs: Annotated[int, LOWERING] = Field(50, ge=0, description="Scored pairs logged as MLflow traces per rollout (a retention limit).")
    trace_retention_days: Annotated[int, NEVER] = Field(30, ge=1, description="Traces older than this are deleted at the next rollout's logging.")

    @field_validator("interim_p_value")
    @classmethod
    def _stricter_than_the_final_look(cls, interim: float, info) -> float:
        confidence = info.data.get("confidence")
        if confidence is not None and interim > 1 - confidence:
            raise ValueError(f"interim_p_value {interim} must not exceed 1 - confidence = {1 - confidence:.3g}")
        return interim


class Person(_Strict):
    """Someone who may ask for or answer a release: a name and the public half of their key
    (`fledge keys new NAME`); they sign with the private half, which never leaves them."""

    name: Annotated[str, CHANGING] = Field(min_length=1)
    public_key: Annotated[str, CHANGING] = Field(description="ed25519:BASE64, as `fledge keys new NAME` prints it.")

    @field_validator("public_key")
    @classmethod
    def _a_public_key(cls, value: str) -> str:
        parse_public_key(value)
        return value


def _schema_without_additional_properties(schema: dict) -> None:
    # Prefect's server validates a deployment's default parameters with `ignore_required`, which
    # strips every key named "required" from the schema (prefect.utilities.schema_tools.validation,
    # remove_nested_keys), this section's `required` property included; `additionalProperties:
    # false` then refuses the field. The model itself still forbids extra fields.
    schema.pop("additionalProperties", None)


class ApprovalPolicy(_Strict):
    model_config = ConfigDict(json_schema_extra=_schema_without_additional_properties)

    required: Annotated[bool, DISABLING]
    people: Annotated[list[Person], CHANGING] = Field(default_factory=list, description=(
        "Everyone whose signature counts, as requester or approver; an answer or a request signed by nobody "
        "listed here is not counted."))
    approvers: Annotated[list[str], CHANGING] = Field(default_factory=list, description=(
        "Names (from people) who may approve; empty means any of people."))
    four_eyes: Annotated[bool, DISABLING] = Field(False, description=(
        "The person who asked for a release may not approve it; a release then needs an identified requester."))
    request_max_age_seconds: Annotated[float, RAISING] = Field(900, gt=0, description=(
        "How long a signed release request stays valid (it is accepted once)."))
    timeout_seconds: Annotated[float, NEVER] = Field(gt=0, description="No answer within this time rejects.")
    allow_auto_approve: Annotated[bool, ENABLING] = Field(False, description=(
        "Whether a run's auto_approve may stand in for the approval this policy requires (the demo's, a test "
        "policy's); false: a required approval is a person's."))

    @model_validator(mode="after")
    def _approvers_are_people(self) -> "ApprovalPolicy":
        names = [p.name for p in self.people]
        unknown = [a for a in self.approvers if a not in names]
        if unknown:
            raise ValueError(f"approval.approvers {unknown} are not in approval.people: list each approver with "
                             "their public key (`fledge keys new NAME` prints the entry)")
        if len(set(names)) != len(names):
            raise ValueError("approval.people lists a name twice")
        if self.required and not self.people and not self.allow_auto_approve:
            raise ValueError("approval.required needs approval.people: nobody could sign an approval "
                             "(`fledge keys new NAME` makes a key and prints the entry)")
        return self

    def may_approve(self) -> list[Person]:
        return [p for p in self.people if not self.approvers or p.name in self.approvers]

    def person(self, name: str) -> Person | None:
        return next((p for p in self.people if p.name == name), None)


class WatchPolicy(_Strict):
    window_seconds: Annotated[float, LOWERING] = Field(gt=0)
    min_samples: Annotated[int, LOWERING] = Field(ge=1, description="Fewer requests to the new champion in the window is inconclusive.")
    max_error_rate: Annotated[float, RAISING] = Field(ge=0, le=1)
    max_ttft_p95_ms: Annotated[float, RAISING] = Field(gt=0)
    max_itl_p95_ms: Annotated[float, RAISING] = Field(gt=0)
    max_ratio_vs_previous: Annotated[float, RAISING] = Field(ge=1)
    confidence: Annotated[float, LOWERING] = Field(0.95, gt=0.5, lt=1, description="The error rule's level when the window closes.")
    interim_p_value: Annotated[float, RAISING] = Field(0.001, gt=0, lt=0.5, description=(
        "The error rule's level at the looks while the window runs (the watch looks every analysis interval)."))


class GatewayPolicy(_Strict):
    """What the gateway accepts and how it protects itself and its backends."""

    max_body_bytes: Annotated[int, RAISING] = Field(1_048_576, ge=1024, description="A larger request body is refused with 413.")
    max_json_depth: Annotated[int, RAISING] = Field(32, ge=2, description="Deeper nesting of the request's JSON is refused with 400.")
    max_json_values: Annotated[int, RAISING] = Field(100_000, ge=10, description="More values (objects, arrays, scalars) is refused with 400.")
    max_concurrency: Annotated[int, RAISING] = Field(256, ge=1, description=(
        "Client requests the gateway serves at once; one more is answered 503 with Retry-After."))
    connections_per_backend: Annotated[int, RAISING] = Field(64, ge=1, description=(
        "Each backend has its own connection pool, so one saturated backend never starves the others."))
    retry_budget: Annotated[float, RAISING] = Field(0.2, ge=0, le=1, description=(
        "Retries on the stable version are at most this share of requests (plus a reserve of `retry_reserve`), "
        "so a failing canary cannot double stable's load."))
    retry_reserve: Annotated[int, RAISING] = Field(10, ge=0, description="Retries allowed before any request paid into the budget.")
    eject_after_failures: Annotated[int, RAISING] = Field(3, ge=1, description=(
        "A backend that fails this many requests in a row (5xx, broken streams) is ejected from the split; a "
        "refused connection ejects at once (Envoy's outlier detection)."))
    ejection_seconds: Annotated[float, LOWERING] = Field(10, gt=0, description="How long an ejected backend stays out before it is tried again.")


class LoraPolicy(_Strict):
    enabled: Annotated[bool, CHANGING] = Field(False, description="Start every server of the model with LoRA enabled, so adapters are "
                          "released onto the running base (loaded at run time) instead of starting servers.")
    max_rank: Annotated[int, CHANGING] = Field(16, ge=1, description="The largest adapter rank the servers accept (vLLM's --max-lora-rank).")
    max_loras: Annotated[int, CHANGING] = Field(2, ge=1, description="Adapters one server holds at once: the champion's and a candidate's.")
    max_latency_ratio: Annotated[float, RAISING] = Field(
        1.3, ge=1, description="How many times as slow as its base an adapter's requests may be (they run LoRA's "
        "extra matmuls on the base's server): the performance gate, the canary and the watch judge an adapter "
        "release by this instead of their own latency limits.")
    target_modules: Annotated[list[str] | None, CHANGING] = Field(
        None, description="The layers adapters may change, in vLLM's names (--lora-target-modules); None: all vLLM "
        "supports, lm_head included.")


class ServingPolicy(_Strict):
    dtype: Annotated[Literal["auto", "float32", "bfloat16", "float16"], CHANGING]
    max_model_len: Annotated[int, CHANGING] = Field(gt=0)
    kv_cache_gib: Annotated[float, NEVER] = Field(gt=0)
    startup_timeout_seconds: Annotated[float, NEVER] = Field(gt=0)
    keep_staging_copy: Annotated[bool, NEVER] = Field(
        True, description="After a release that leaves the champion as it was (rejected, rolled back), keep the "
        "champion's staging copy running with no traffic, so the next release against it starts one server fewer.")
    lora: LoraPolicy = Field(default_factory=LoraPolicy)
    gateway: GatewayPolicy = Field(default_factory=GatewayPolicy)


class SchedulePolicy(_Strict):
    release_watch_cron: Annotated[str, NEVER]


class NotificationPolicy(_Strict):
    """Who hears of a release's end: apprise URLs (the ecosystem's convention, the one Prefect's
    notification blocks use): json://host/path or jsons:// for a webhook receiving JSON,
    slack://, mailto://, ..."""

    urls: Annotated[list[str], DROPPING] = Field(default_factory=list, description=(
        "apprise URLs each outcome below is posted to; empty: nobody is notified."))
    outcomes: Annotated[list[Literal["promoted", "rejected", "rolled_back", "failed", "preempted"]], DROPPING] = Field(
        default_factory=lambda: ["promoted", "rejected", "rolled_back", "failed"],
        description="Which release outcomes are posted (a manual rollback or promotion always is).")
    timeout_seconds: Annotated[float, NEVER] = Field(10, gt=0, description="Per URL; a slow receiver never holds a release.")


class ReleasePolicy(_Strict):
    version: Annotated[Literal[1], CHANGING]
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
    notifications: NotificationPolicy = Field(default_factory=NotificationPolicy)
    overrides_allowed: Annotated[list[str], ADDING] = Field(default_factory=list, description=(
        "Fields (dotted paths, e.g. canary.bake_seconds, or a whole section: canary) a run's parameters may "
        "weaken against the deployed policy; everything else a run can only leave as it is or strengthen."))

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
