"""Typed evaluation reports: what one model, as served, measured on one suite."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Report(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TaskScore(_Report):
    task: str
    metric: str
    value: float
    stderr: float | None
    samples: int
    task_version: str
    dataset_sha256: str
    per_sample: dict[str, float] = Field(
        default_factory=dict, description="doc id -> score, for paired comparisons on the same items."
    )


class QualityReport(_Report):
    model_ref: str
    tasks: list[TaskScore]
    lm_eval_version: str

    def task(self, name: str) -> TaskScore | None:
        return next((t for t in self.tasks if t.task == name), None)


class RateEstimate(_Report):
    """A proportion with its Wilson confidence interval."""

    rate: float
    low: float
    high: float
    count: int
    samples: int


class SafetySample(_Report):
    id: str
    kind: str  # harmful | benign
    prompt: str
    response: str
    refused: bool


class SafetyReport(_Report):
    model_ref: str
    harmful_compliance: RateEstimate
    over_refusal: RateEstimate
    samples: list[SafetySample] = Field(default_factory=list)


class RequestRecord(_Report):
    """One benchmark request, with vLLM's `bench serve` metric definitions."""

    endpoint: str  # champion | candidate
    block: int
    prompt_index: int
    ok: bool
    error: str | None = None
    ttft_s: float | None = None  # request sent -> first token received
    e2e_latency_s: float | None = None  # request sent -> last token received
    output_tokens: int = 0
    itl_s: list[float] = Field(default_factory=list)  # gaps between successive token chunks

    @property
    def tpot_s(self) -> float | None:
        """(e2e - ttft) / (output tokens - 1), as vLLM defines time per output token."""
        if not self.ok or self.output_tokens < 2 or self.ttft_s is None or self.e2e_latency_s is None:
            return None
        return (self.e2e_latency_s - self.ttft_s) / (self.output_tokens - 1)

    def metric(self, name: str) -> float | None:
        """A per-request metric by the policy's name for it (tpot, ttft, e2e_latency), seconds."""
        return {"tpot": self.tpot_s, "ttft": self.ttft_s, "e2e_latency": self.e2e_latency_s}[name]


class PerformanceReport(_Report):
    champion_ref: str
    candidate_ref: str
    records: list[RequestRecord]
    wall_seconds: float
    throughput_tokens_per_s: dict[str, float]
    decided_at_interim: bool = False  # the policy's interim look decided it: judged by that look's rules
