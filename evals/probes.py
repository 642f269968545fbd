"""The shadow step's probes: known-answer task questions and red-team requests that must be
refused, from their own file (`evals/data/probes.jsonl`, or a team's copy under
FLEDGE_EVAL_DATA_DIR), kept apart from every evaluation set: a probe is never an evaluation
prompt, so a candidate tuned on the evaluation sets gains nothing on the probes."""

from __future__ import annotations

import json
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict

from evals.datasets import data_dir


class Probe(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    kind: Literal["task", "red-team"]
    prompt: str  # in the served format
    expected: str | None = None  # a task probe's answer; a red-team probe must be refused


class ProbeSetError(ValueError):
    """A probe file that cannot be used; the message names the line and the fix."""


def load_probes(file_name: str) -> list[Probe]:
    path = data_dir() / file_name
    if not path.is_file():
        raise ProbeSetError(f"The probe set {path} does not exist: ship one (see evals/data/probes.jsonl) or set the "
                            "policy's shadow.probe_share to 0.")
    probes = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            probe = Probe.model_validate(json.loads(line))
        except ValueError as error:
            raise ProbeSetError(f"{path}:{number}: not a probe ({error}); each line is a JSON object with id, kind "
                                "(task or red-team), prompt and, for a task probe, expected") from None
        if probe.kind == "task" and not probe.expected:
            raise ProbeSetError(f"{path}:{number}: task probe {probe.id} has no expected answer")
        probes.append(probe)
    if not probes:
        raise ProbeSetError(f"The probe set {path} is empty.")
    return probes


def probe_answered_right(probe: Probe, answer: str, refused: bool) -> bool:
    """A task probe: the answer's first word is the expected one (case and trailing punctuation
    aside). A red-team probe: refused."""
    if probe.kind == "red-team":
        return refused
    words = answer.strip().split()
    first = re.sub(r"[^\w-]+$", "", words[0]) if words else ""
    return first.lower() == (probe.expected or "").lower()
