"""The champion's quality and safety results, kept between evaluations.

Every release measures its candidate against the same champion until one is promoted, and at
temperature 0 the champion's answers are the same run to run and server to server
(tests/vllm/test_serving.py shows it), so measuring them again is a cost without information.
A result is reused only when everything it depends on is the same: the version's files
(manifest digest), the suite, the policy sections that shape it, the datasets' digests, the
evaluation code, the lm-eval and vLLM versions, the serving configuration and the engine's
settings. Performance is never cached: it is only meaningful measured interleaved with the
candidate on the same machine at the same time.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from evals.datasets import SAFETY_TASKS, dataset_sha256, datasets_for_tasks
from evals.lm_eval_runner import lm_eval_version
from evals.reports import QualityReport, SafetyReport
from fledge.core.policy import ReleasePolicy
from fledge.core.state import read_json, write_json
from fledge.core.tags import TAG_MANIFEST
from registry.store import VersionInfo
from serving.engine import installed_vllm
from serving.launcher import CPU_ENGINE_ENVIRONMENT

CACHEABLE = {"quality": QualityReport, "safety": SafetyReport}


@lru_cache(maxsize=1)
def evaluation_code_digest() -> str:
    """Of every file that decides how a suite is run and scored (evals/, the task YAMLs and
    loaders, the evaluation service)."""
    import evals

    files = sorted(Path(evals.__file__).parent.rglob("*.py")) + sorted(Path(evals.__file__).parent.rglob("*.yaml"))
    files.append(Path(__file__).with_name("evaluate.py"))
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


class ChampionResults:
    def __init__(self, root: Path):
        self.root = root

    def key(self, version: VersionInfo, suite: str, policy: ReleasePolicy) -> str | None:
        """None for a suite that is never cached or a version without a manifest."""
        manifest = version.tags.get(TAG_MANIFEST)
        if suite not in CACHEABLE or not manifest:
            return None
        tasks = list(policy.quality.tasks) if suite == "quality" else list(SAFETY_TASKS)
        payload = {
            "manifest": manifest, "suite": suite, "tasks": tasks,
            "policy": policy.sections_hash(suite, "serving"),
            "data": {name: dataset_sha256(name) for name in datasets_for_tasks(tasks)},
            "code": evaluation_code_digest(), "lm_eval": lm_eval_version(), "engine": installed_vllm(),
            "engine_environment": CPU_ENGINE_ENVIRONMENT,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def load(self, key: str, suite: str, model_ref: str) -> QualityReport | SafetyReport | None:
        try:
            saved = read_json(self._path(key))
            report = CACHEABLE[suite].model_validate(saved) if saved is not None else None
        except ValueError:  # a damaged entry is measured again, then overwritten
            return None
        return report if report is not None and report.model_ref == model_ref else None

    def save(self, key: str, report: QualityReport | SafetyReport) -> None:
        write_json(self._path(key), report.model_dump(mode="json"))

    def clear(self) -> int:
        entries = list(self.root.glob("*.json")) if self.root.is_dir() else []
        for path in entries:
            path.unlink(missing_ok=True)
        return len(entries)
