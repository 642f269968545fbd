"""Data validation with Great Expectations 1.x (ephemeral context, pandas data source).

Two kinds of suites:
- shipped evaluation datasets: schema, no empty prompts, labels within their choices, no
  duplicates, prompt lengths within what the served model accepts. A dataset that fails stops
  the evaluation before any request is sent.
- result tables: values in range, the sample counts expected, no failed benchmark request
  dropped or passed off as a success. A suite whose results fail is an error, not a verdict.
Every validation result is returned as JSON, to be kept as an artifact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd

from evals.datasets import dataset_path
from evals.verdict import SuiteReports
from fledge.core.errors import FledgeError


@dataclass
class ValidationOutcome:
    name: str
    success: bool
    failures: list[str]
    result_json: dict = field(repr=False)


class DatasetValidationError(FledgeError):
    def __init__(self, outcomes: list[ValidationOutcome]):
        self.outcomes = outcomes
        failed = [o for o in outcomes if not o.success]
        listed = "; ".join(f"{o.name}: {', '.join(o.failures)}" for o in failed)
        super().__init__(
            f"Evaluation data failed validation, so nothing was sent to any model ({listed}). "
            "Fix the dataset file (evals/data) and run again; the Great Expectations report is kept "
            "with the run."
        )


def _validate(name: str, frame: pd.DataFrame, expectations: list) -> ValidationOutcome:
    import great_expectations as gx

    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(f"fledge-{name}")
    asset = source.add_dataframe_asset(name=name)
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame})
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}-suite", expectations=expectations))
    result = batch.validate(suite)
    failures = []
    for item in result.results:
        if not item.success:
            config = item.expectation_config
            column = config.kwargs.get("column") or config.kwargs.get("column_A") or ""
            unexpected = (item.result or {}).get("partial_unexpected_list") or (item.result or {}).get("observed_value")
            failures.append(f"{config.type}({column}) unexpected {json.dumps(unexpected, default=str)}")
    return ValidationOutcome(name, bool(result.success), failures, json.loads(json.dumps(result.to_json_dict(), default=str)))


def _read(name: str) -> pd.DataFrame:
    return pd.read_json(dataset_path(name), lines=True)


def dataset_expectations(name: str, frame: pd.DataFrame, max_prompt_tokens: int, count_tokens: Callable[[str], int]) -> tuple[pd.DataFrame, list]:
    import great_expectations.expectations as gxe

    prompt_column = "prompt" if name == "safety" else "question"
    frame = frame.copy()
    frame["prompt_tokens"] = [count_tokens(f"Q: {text}\nA:") for text in frame.get(prompt_column, pd.Series(dtype=str)).fillna("")]
    expectations = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToNotBeNull(column=prompt_column),
        gxe.ExpectColumnValueLengthsToBeBetween(column=prompt_column, min_value=1),
        gxe.ExpectColumnValuesToBeUnique(column=prompt_column),
        gxe.ExpectColumnValuesToBeBetween(column="prompt_tokens", min_value=1, max_value=max_prompt_tokens),
    ]
    if name == "capitals":
        frame["n_choices"] = frame["choices"].map(lambda c: len(c) if isinstance(c, list) else 0)
        frame["choices_unique"] = frame["choices"].map(lambda c: isinstance(c, list) and len(set(c)) == len(c))
        expectations += [
            gxe.ExpectTableColumnsToMatchSet(column_set=["id", "question", "choices", "answer", "prompt_tokens", "n_choices", "choices_unique"], exact_match=True),
            gxe.ExpectColumnValuesToBeBetween(column="n_choices", min_value=2),
            gxe.ExpectColumnValuesToBeBetween(column="answer", min_value=0),
            # A label outside its choices: the answer index must be below the number of choices.
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="n_choices", column_B="answer"),
            gxe.ExpectColumnValuesToBeInSet(column="choices_unique", value_set=[True]),
        ]
    elif name == "arithmetic":
        expectations += [
            gxe.ExpectTableColumnsToMatchSet(column_set=["id", "question", "answer", "prompt_tokens"], exact_match=True),
            gxe.ExpectColumnValuesToMatchRegex(column="answer", regex=r"^-?\d+$"),
        ]
    elif name == "safety":
        frame["label_consistent"] = (frame["kind"] == "harmful") == frame["should_refuse"]
        expectations += [
            gxe.ExpectTableColumnsToMatchSet(column_set=["id", "kind", "prompt", "should_refuse", "held_out_phrasing", "prompt_tokens", "label_consistent"], exact_match=True),
            gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=["harmful", "benign"]),
            gxe.ExpectColumnDistinctValuesToEqualSet(column="kind", value_set=["harmful", "benign"]),
            gxe.ExpectColumnValuesToBeInSet(column="label_consistent", value_set=[True]),
        ]
    return frame, expectations


def validate_datasets(
    names: list[str], max_prompt_tokens: int, count_tokens: Callable[[str], int], *, raise_on_failure: bool = True
) -> list[ValidationOutcome]:
    outcomes = []
    for name in names:
        frame, expectations = dataset_expectations(name, _read(name), max_prompt_tokens, count_tokens)
        outcomes.append(_validate(f"dataset-{name}", frame, expectations))
    if raise_on_failure and not all(o.success for o in outcomes):
        raise DatasetValidationError(outcomes)
    return outcomes


def validate_benchmark_table(records: pd.DataFrame, expected_rows: int, max_tokens: int) -> ValidationOutcome:
    import great_expectations.expectations as gxe

    frame = records.copy()
    # A failed request must be counted as one, never dropped (row count) or turned into a fast
    # success (a success generated every token it was asked for, under ignore_eos).
    frame["tokens_ok"] = (~frame["ok"]) | (frame["output_tokens"] == max_tokens)
    return _validate("benchmark-requests", frame, [
        gxe.ExpectTableRowCountToEqual(value=expected_rows),
        gxe.ExpectColumnValuesToBeInSet(column="ok", value_set=[True, False]),
        gxe.ExpectColumnValuesToBeBetween(column="ttft_s", min_value=0, max_value=600),
        gxe.ExpectColumnValuesToBeBetween(column="e2e_latency_s", min_value=0, max_value=600),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="e2e_latency_s", column_B="ttft_s", or_equal=True),
        gxe.ExpectColumnValuesToBeInSet(column="tokens_ok", value_set=[True]),
    ])


def validate_safety_table(samples: pd.DataFrame, expected_rows: int) -> ValidationOutcome:
    import great_expectations.expectations as gxe

    return _validate("safety-samples", samples, [
        gxe.ExpectTableRowCountToEqual(value=expected_rows),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToBeInSet(column="refused", value_set=[True, False]),
        gxe.ExpectColumnValuesToBeInSet(column="kind", value_set=["harmful", "benign"]),
    ])


def validate_quality_table(scores: pd.DataFrame, expected_samples: dict[str, int]) -> ValidationOutcome:
    import great_expectations.expectations as gxe

    frame = scores.copy()
    frame["samples_as_expected"] = [expected_samples.get(t) == n for t, n in zip(frame["task"], frame["samples"])]
    return _validate("quality-scores", frame, [
        gxe.ExpectTableRowCountToEqual(value=len(expected_samples)),
        gxe.ExpectColumnValuesToBeBetween(column="value", min_value=0, max_value=1),
        gxe.ExpectColumnValuesToBeInSet(column="samples_as_expected", value_set=[True]),
    ])


def validate_results(reports: SuiteReports, max_tokens: int, requests_per_block: int) -> dict[str, ValidationOutcome]:
    """Each measured suite's result table of one model, by suite: every shipped item scored
    once, rates within [0, 1], every benchmark request accounted for."""
    from evals.datasets import TASK_DATASETS

    outcomes: dict[str, ValidationOutcome] = {}
    if reports.quality:
        rows = {t.task: len(_read(TASK_DATASETS[t.task])) for t in reports.quality.tasks}
        table = pd.DataFrame([{"task": t.task, "value": t.value, "samples": t.samples} for t in reports.quality.tasks])
        outcomes["quality"] = validate_quality_table(table, rows)
    if reports.safety:
        table = pd.DataFrame([s.model_dump(include={"id", "kind", "refused"}) for s in reports.safety.samples])
        outcomes["safety"] = validate_safety_table(table, len(_read("safety")))
    if reports.performance:
        records = reports.performance.records
        table = pd.DataFrame([{"ok": r.ok, "ttft_s": r.ttft_s, "e2e_latency_s": r.e2e_latency_s,
                               "output_tokens": r.output_tokens} for r in records])
        blocks = {r.block for r in records}
        outcomes["performance"] = validate_benchmark_table(table, 2 * len(blocks) * requests_per_block, max_tokens)
    return outcomes
