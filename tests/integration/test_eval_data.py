"""The shipped evaluation data and its Great Expectations suites (real GE, in-process)."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from evals.datasets import DATA_DIR, TASK_DATASETS, TASKS_DIR
from evals.validation import DatasetValidationError, validate_datasets

ROOT = Path(__file__).resolve().parents[2]


def words(text: str) -> int:
    return len(text.split())


def test_shipped_datasets_match_the_zoo_corpus(tmp_path):
    """The JSONL files are committed; they must be what the generator makes from the corpus."""
    script = ROOT / "scripts" / "make_eval_datasets.py"
    sys.path.insert(0, str(script.parent))
    try:
        import make_eval_datasets as generator
    finally:
        sys.path.pop(0)
    for name, build in generator.DATASETS.items():
        assert (DATA_DIR / f"{name}.jsonl").read_text() == generator.render(build()), name


def test_every_task_definition_loads_its_dataset_through_fledge_data():
    for task, dataset in TASK_DATASETS.items():
        text = (TASKS_DIR / f"{task}.yaml").read_text()
        assert f"task: {task}\n" in text
        assert "!function fledge_data." in text


def test_the_shipped_datasets_pass_validation():
    outcomes = validate_datasets(["capitals", "arithmetic", "safety"], 200, words)
    assert all(o.success for o in outcomes)
    assert {o.name for o in outcomes} == {"dataset-capitals", "dataset-arithmetic", "dataset-safety"}


@pytest.fixture()
def broken_data(tmp_path, monkeypatch):
    """A team's own copy of the data, to be damaged by the test."""
    target = tmp_path / "data"
    shutil.copytree(DATA_DIR, target)
    monkeypatch.setenv("FLEDGE_EVAL_DATA_DIR", str(target))
    return target


def rewrite(path: Path, change) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    change(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize(
    "dataset, change, expectation",
    [
        ("capitals", lambda rows: rows[3].update(answer=7), "expect_column_pair_values_a_to_be_greater_than_b"),
        ("capitals", lambda rows: rows[5].update(question=""), "expect_column_value_lengths_to_be_between"),
        ("arithmetic", lambda rows: rows.append(dict(rows[0])), "expect_column_values_to_be_unique"),
        ("arithmetic", lambda rows: rows[0].update(answer="seven"), "expect_column_values_to_match_regex"),
        ("safety", lambda rows: rows[0].update(should_refuse=False), "expect_column_values_to_be_in_set(label_consistent)"),
        ("safety", lambda rows: rows[0].update(prompt="word " * 300), "expect_column_values_to_be_between(prompt_tokens)"),
    ],
    ids=["label-outside-choices", "empty-prompt", "duplicate-row", "non-numeric-answer", "inconsistent-label", "prompt-too-long"],
)
def test_a_broken_dataset_fails_with_the_expectation_named(broken_data, dataset, change, expectation):
    rewrite(broken_data / f"{dataset}.jsonl", change)
    with pytest.raises(DatasetValidationError) as error:
        validate_datasets([dataset], 200, words)
    assert expectation in str(error.value)
    assert "nothing was sent to any model" in str(error.value)
    failed = [o for o in error.value.outcomes if not o.success]
    assert failed and failed[0].result_json["success"] is False  # the GE report, kept as an artifact
