"""Every `fledge.*` key Fledge writes on MLflow model versions and runs, and the release status.

One module so that a reader can see the whole vocabulary and a rename happens in one place.
(None has been renamed: registries written by earlier Fledge versions read as they are.)
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """The release status a version carries in its `fledge.status` tag."""

    CANDIDATE = "candidate"
    EVALUATING = "evaluating"
    REJECTED = "rejected"
    CANARY = "canary"
    CHAMPION = "champion"
    PREVIOUS = "previous"
    ROLLED_BACK = "rolled_back"


# ---- model version tags -----------------------------------------------------------------------
TAG_STATUS = "fledge.status"
TAG_MANIFEST = "fledge.manifest_sha256"
TAG_SIZE = "fledge.size_bytes"
TAG_SOURCE_PATH = "fledge.source_path"
TAG_SOURCE_VERSION = "fledge.source_version"  # lineage: the version this one was derived from
TAG_REGISTERED_BY = "fledge.registered_by"
TAG_LAYOUT = "fledge.layout"  # how the files were logged: fledge, mlflow-transformers, hf-directory, peft-adapter
TAG_FLAVOR = "fledge.flavor"  # the MLflow flavor they were logged with ("none": plain files)
TAG_ADOPTION_RUN = "fledge.adoption.run_id"  # the run holding the manifest of a version Fledge adopted
TAG_BASE = "fledge.base"  # a LoRA adapter's base model version, NAME/VERSION

TAG_EVAL_RUN = "fledge.eval.run_id"  # the evaluation's own MLflow run (fledge-evaluations)
TAG_EVAL_VERDICT = "fledge.eval.verdict"
TAG_EVAL_CHAMPION = "fledge.eval.champion"

TAG_QUANT_PREFIX = "fledge.quant."
TAG_QUANT_RECIPE = "fledge.quant.recipe_sha256"
TAG_QUANT_SCHEME = "fledge.quant.scheme"
TAG_QUANT_TOOL = "fledge.quant.tool"
TAG_QUANT_WEIGHT_RANGE = "fledge.quant.weight_range"
TAG_QUANT_ACTIVATIONS = "fledge.quant.activations"
TAG_QUANT_CALIBRATION = "fledge.quant.calibration_sha256"
TAG_QUANT_SECONDS = "fledge.quant.seconds"
TAG_QUANT_SIZE_BEFORE = "fledge.quant.size_before"
TAG_QUANT_SIZE_AFTER = "fledge.quant.size_after"
TAG_QUANT_GATE = "fledge.quant.gate"
TAG_QUANT_GATE_RUN = "fledge.quant.gate_run_id"

TAG_RELEASE_RUN = "fledge.release.run_id"  # the release's MLflow run (fledge-releases)
TAG_RELEASE_FLOW_RUN = "fledge.release.flow_run_id"
TAG_RELEASE_OUTCOME = "fledge.release.outcome"
TAG_RELEASE_REASON = "fledge.release.reason"

TAG_APPROVAL = "fledge.approval"
TAG_APPROVER = "fledge.approval.by"
TAG_APPROVAL_COMMENT = "fledge.approval.comment"
TAG_APPROVAL_REPORT_DIGEST = "fledge.approval.report_sha256"  # of the verdict report the approver signed
TAG_APPROVAL_EVAL_RUNS = "fledge.approval.evaluation_runs"  # suite=MLflow run id, the runs behind that report
TAG_APPROVAL_KEY = "fledge.approval.key"  # fingerprint of the key whose signature counted
TAG_REQUESTED_BY = "fledge.release.requested_by"  # a person (signed request), a schedule, or unidentified


def change_tags(kind: str) -> dict[str, str]:
    """Keys a manual `rollback` or `promote` records on the versions it moves."""
    return {field: f"fledge.{kind}.{field}" for field in ("by", "reason", "run_id", "flow_run_id")}


# ---- run tags (evaluation, quantization-gate and release runs) ----------------------------------
RUN_KIND = "fledge.kind"  # evaluation | quantization-gate | release | rollback | promote | adoption
RUN_MODEL = "fledge.model"
RUN_CANDIDATE = "fledge.candidate"
RUN_CHAMPION = "fledge.champion"
RUN_CHAMPION_CACHED = "fledge.champion_cached"  # the champion's suites whose results were reused
RUN_RELEASED = "fledge.released"  # the version actually released, where quantization made another
RUN_SOURCE = "fledge.source"
RUN_QUANTIZED = "fledge.quantized"
RUN_REQUESTED_BY = "fledge.requested_by"
RUN_VERDICT = "fledge.verdict"
RUN_OUTCOME = "fledge.outcome"
RUN_REASON = "fledge.reason"
RUN_CANARY = "fledge.canary"
RUN_APPROVAL = "fledge.approval"
RUN_POLICY_HASH = "fledge.policy_hash"
RUN_FLOW_RUNS = "prefect.flow_run_ids"
RUN_FLOW_RUN_URL = "prefect.flow_run_url"
RUN_PARENT = "mlflow.parentRunId"


def run_gate_tag(gate: str) -> str:
    return f"fledge.gate.{gate}"


def run_eval_tag(suite: str) -> str:
    return f"fledge.eval_run.{suite}"


# ---- MLflow experiments -------------------------------------------------------------------------
REGISTRY_EXPERIMENT = "fledge-registry"  # one run per registered version: its files
EVAL_EXPERIMENT = "fledge-evaluations"  # evaluations and quantization gates
RELEASE_EXPERIMENT = "fledge-releases"  # releases, rollbacks and promotions
