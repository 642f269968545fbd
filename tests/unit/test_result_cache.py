"""When a champion's cached suite result may be reused, and when it must be measured again."""

from __future__ import annotations

import shutil

import pytest

from evals.datasets import DATA_DIR
from evals.reports import QualityReport, TaskScore
from fledge.core.policy import load_policy
from fledge.services.result_cache import ChampionResults
from registry.store import VersionInfo

POLICY = load_policy()


def version(manifest: str = "m1") -> VersionInfo:
    return VersionInfo(name="tiny", version="1", aliases=(), tags={"fledge.manifest_sha256": manifest})


def report(ref: str = "tiny/1") -> QualityReport:
    score = TaskScore(task="fledge_capitals", metric="acc", value=0.5, stderr=0.1, samples=2, task_version="1.0",
                      dataset_sha256="d", per_sample={"a": 1.0, "b": 0.0})
    return QualityReport(model_ref=ref, tasks=[score], lm_eval_version="0.4")


def test_a_saved_result_comes_back_for_the_same_version_only(tmp_path):
    cache = ChampionResults(tmp_path)
    key = cache.key(version(), "quality", POLICY)
    cache.save(key, report())
    assert cache.load(key, "quality", "tiny/1") == report()
    assert cache.load(key, "quality", "tiny/2") is None
    assert cache.clear() == 1 and cache.load(key, "quality", "tiny/1") is None


def test_anything_the_result_depends_on_changes_the_key(tmp_path, monkeypatch):
    cache = ChampionResults(tmp_path)
    key = cache.key(version(), "quality", POLICY)
    assert cache.key(version("m2"), "quality", POLICY) != key  # other files
    assert cache.key(version(), "safety", POLICY) != key
    stricter = POLICY.model_copy(update={"quality": POLICY.quality.model_copy(update={"tasks": ["fledge_capitals"]})})
    assert cache.key(version(), "quality", stricter) != key
    longer = POLICY.model_copy(update={"serving": POLICY.serving.model_copy(update={"max_model_len": 128})})
    assert cache.key(version(), "quality", longer) != key
    data = tmp_path / "data"
    shutil.copytree(DATA_DIR, data)
    (data / "capitals.jsonl").write_text((data / "capitals.jsonl").read_text().replace("A", "B", 1))
    monkeypatch.setenv("FLEDGE_EVAL_DATA_DIR", str(data))
    assert cache.key(version(), "quality", POLICY) != key  # other evaluation data
    monkeypatch.delenv("FLEDGE_EVAL_DATA_DIR")
    # Sections the suite does not read leave the key alone.
    slower_canary = POLICY.model_copy(update={"canary": POLICY.canary.model_copy(update={"bake_seconds": 999})})
    assert cache.key(version(), "quality", slower_canary) == key


@pytest.mark.parametrize("suite", ["performance", "nonsense"])
def test_performance_is_never_cached(tmp_path, suite):
    assert ChampionResults(tmp_path).key(version(), suite, POLICY) is None


def test_a_damaged_entry_is_measured_again(tmp_path):
    cache = ChampionResults(tmp_path)
    key = cache.key(version(), "quality", POLICY)
    (tmp_path / f"{key}.json").write_text("{not json")
    assert cache.load(key, "quality", "tiny/1") is None
