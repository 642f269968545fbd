"""Quantize a registered version into a new version of the same model, and gate it against
its own source: the wiring behind `fledge quantize` and the release flow's quantize step."""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable

from evals.agreement import AgreementReport, measure_agreement
from evals.datasets import QUESTION_DATASETS, read_prompts
from evals.endpoint import Endpoint
from fledge.core.outcome import GateResult, Outcome, worst
from fledge.core.policy import ReleasePolicy
from fledge.core import tags
from fledge.services.context import Workspace, local_launcher
from fledge.services.evaluate import core_plan, server_config
from registry.store import VersionInfo
from serving.engine import supported_architectures
from serving.quantize import QuantizationRecipe, SchemeNotServable, check_servable, quantize, recipe_for

AGREEMENT_PROMPTS = 100


@dataclass
class QuantizedVersion:
    source: VersionInfo
    version: VersionInfo
    reused: bool


@dataclass
class QuantizationGateResult:
    outcome: Outcome
    gates: list[GateResult]
    agreement: AgreementReport | None
    speed_ratio: float | None  # quantized / source time per output token; informational
    run_id: str


def recipe_digest(recipe: QuantizationRecipe, source: VersionInfo) -> str:
    payload = {"recipe": recipe.as_tags(), "source_manifest": source.tags.get(tags.TAG_MANIFEST)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def quantize_version(
    ref: str,
    scheme: str,
    workspace: Workspace | None = None,
    weight_range: int | None = None,
    log: Callable[[str], None] = print,
) -> QuantizedVersion:
    """The quantized version of `ref` (made and registered, or the one made before)."""
    check_servable(scheme)  # before any download or work
    workspace = workspace or Workspace.open()
    home, registry = workspace.home, workspace.registry
    source = registry.resolve(ref)
    if scheme == "none":
        return QuantizedVersion(source, source, reused=True)
    if source.adapter_base:
        raise SchemeNotServable(
            f"{source.ref} is a LoRA adapter on {source.adapter_base}: quantization applies to full models. "
            f"Quantize the base (`fledge quantize {source.adapter_base}`); releases skip it for adapters.")
    recipe = recipe_for(scheme, weight_range)
    digest = recipe_digest(recipe, source)
    for version in registry.versions(source.name):
        if version.tags.get(tags.TAG_QUANT_RECIPE) == digest:
            log(f"{version.ref} is {source.ref} quantized with this recipe already; reusing it")
            return QuantizedVersion(source, version, reused=True)

    source_dir = registry.materialize(source.ref, home.checkpoints, supported_architectures())
    out_dir = home.files.quantized / f"{source.name.replace('/', '_')}-{source.version}-{digest}"
    log(f"Quantizing {source.ref} as {scheme} ({recipe.tool}, weight range {recipe.weight_range})")
    output = quantize(source_dir, out_dir, recipe)
    lineage = {
        tags.TAG_SOURCE_VERSION: source.version,
        tags.TAG_QUANT_RECIPE: digest,
        **recipe.as_tags(),
        tags.TAG_QUANT_SECONDS: f"{output.seconds:.2f}",
        tags.TAG_QUANT_SIZE_BEFORE: str(output.size_before),
        tags.TAG_QUANT_SIZE_AFTER: str(output.size_after),
    }
    version = registry.register(
        out_dir, source.name, description=f"{scheme} quantization of {source.ref}", tags=lineage,
        supported_architectures=supported_architectures(),
    )
    shutil.rmtree(out_dir, ignore_errors=True)  # the registry holds it now
    return QuantizedVersion(source, version, reused=False)


def gate_quantized(
    quantized: QuantizedVersion,
    policy: ReleasePolicy,
    workspace: Workspace | None = None,
    log: Callable[[str], None] = print,
    served: dict[str, Endpoint] | None = None,
) -> QuantizationGateResult:
    """Serve source and quantized side by side; check numeric agreement and, when it holds, the
    quality delta, and measure (without gating) the speed ratio."""
    from evals.gates import performance_gate
    from evals.perf import run_benchmark
    from evals.quality import run_quality
    from evals.quantization_gate import agreement_gate, quality_vs_source_gate

    workspace = workspace or Workspace.open()
    home, registry, runs = workspace.home, workspace.registry, workspace.registry.runs
    source, version = quantized.source, quantized.version
    run_id = runs.start(tags.EVAL_EXPERIMENT, f"quantization-gate-{version.ref}", {
        tags.RUN_KIND: "quantization-gate", tags.RUN_SOURCE: source.ref, tags.RUN_QUANTIZED: version.ref})
    runs.log_params(run_id, {"policy_hash": policy.content_hash, **version.tags})
    with ExitStack() as servers:
        if served is None:
            launcher = local_launcher(home)
            cores = core_plan(2, comparing_speed=True)  # it reports a speed ratio
            endpoints = {}
            for (role, v), core in zip((("source", source), ("quantized", version)), cores):
                model_dir = registry.materialize(v.ref, home.checkpoints)
                handle = launcher.start(server_config(policy.serving, model_dir, v.ref, core))
                servers.callback(handle.stop)
                endpoints[role] = Endpoint(handle.base_url, v.ref)
        else:
            endpoints = served
        log("Scoring next-token agreement with the source")
        prompts = read_prompts(list(QUESTION_DATASETS))[:AGREEMENT_PROMPTS]
        agreement = measure_agreement(endpoints["source"], endpoints["quantized"], prompts)
        gates = [agreement_gate(policy.quantization, agreement)]
        speed, quality_metrics = None, {}
        # Numbers that disagree with the source already fail the version, as a release stops at
        # its first failing gate: its quality and speed are not worth the minutes to measure.
        if gates[0].outcome is Outcome.FAIL:
            log("Agreement with the source failed: quality and speed not measured")
        else:
            log("Quality of the quantized version against its source")
            source_quality, _ = run_quality(endpoints["source"], list(policy.quality.tasks))
            quantized_quality, _ = run_quality(endpoints["quantized"], list(policy.quality.tasks))
            gates.append(quality_vs_source_gate(policy.quality, policy.quantization, source_quality, quantized_quality))
            quality_metrics = {**{f"source.{t.task}": t.value for t in source_quality.tasks},
                               **{f"quantized.{t.task}": t.value for t in quantized_quality.tasks}}
            perf_policy = policy.performance.model_copy(update={"blocks": 2})
            speed = performance_gate(perf_policy, run_benchmark(endpoints["source"], endpoints["quantized"],
                                                                 read_prompts(["arithmetic"]), perf_policy))
    outcome = worst([g.outcome for g in gates])
    speed_ratio = speed.checks[-1].measured if speed and speed.checks else None
    runs.log_metrics(run_id, {
        "agreement.top1": agreement.top1_agreement, "agreement.logprob_mae": agreement.logprob_mae,
        "agreement.logprob_max_abs": agreement.logprob_max_abs,
        **quality_metrics,
        **({"speed.tpot_ratio_quantized_over_source": speed_ratio} if speed_ratio else {}),
        "size.before_bytes": float(version.tags.get(tags.TAG_QUANT_SIZE_BEFORE, 0)),
        "size.after_bytes": float(version.tags.get(tags.TAG_QUANT_SIZE_AFTER, 0)),
    })
    runs.log_json(run_id, "quantization_gate.json", {
        "outcome": outcome.value, "gates": [g.model_dump(mode="json") for g in gates],
        "agreement": agreement.model_dump(), "speed": speed.model_dump(mode="json") if speed else None})
    runs.set_tags(run_id, {tags.RUN_VERDICT: outcome.value})
    registry.set_tags(version.name, version.version, {tags.TAG_QUANT_GATE: outcome.value, tags.TAG_QUANT_GATE_RUN: run_id})
    runs.finish(run_id)
    return QuantizationGateResult(outcome, gates, agreement, speed_ratio, run_id)
