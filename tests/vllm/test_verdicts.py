"""The gates find each zoo variant's truth through real vLLM on CPU, against `base` as champion.

The champion is the session's served `base` (`served_base` in tests/vllm/conftest.py, the
version `zoo-base/1`); each candidate is registered beside it, served in turn and evaluated
through `fledge.services.evaluate.evaluate`, the same code `fledge eval` and the release flow
run, with the default policy. Every evaluation is logged to the session's MLflow.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from evals.endpoint import Endpoint
from fledge.core.outcome import Outcome
from fledge.services.evaluate import evaluate, server_config
from fledge.core.home import FledgeHome
from fledge.core.policy import load_policy
from fledge.services.context import Workspace

pytestmark = [pytest.mark.vllm, pytest.mark.zoo, pytest.mark.e2e]

MODEL = "zoo-base"  # the registered model of the session's served `base`
POLICY = load_policy()


@pytest.fixture(scope="module")
def versions(zoo, registry, served_base):
    refs = {}
    for variant in ("base", "improved", "unsafe", "degraded", "slow"):
        version, _ = registry.register_once(zoo[variant].path, MODEL, description=zoo[variant].truth)
        refs[variant] = version.ref
    registry.set_alias(MODEL, "champion", refs["base"].split("/")[1])
    return refs


@pytest.fixture(scope="module")
def home(session_home):
    return FledgeHome(session_home)


@pytest.fixture(scope="module")
def champion(versions, served_base):
    # Unpinned, like `evaluate` when it compares speed (see fledge.services.evaluate.core_plan).
    assert served_base.ref == versions["base"] and served_base.handle.config.cpu_cores is None
    return Endpoint(served_base.handle.base_url, served_base.ref)


def evaluate_served(variant, suites, versions, registry, launcher, home, champion):
    model_dir = registry.materialize(versions[variant], home.checkpoints)
    with launcher.start(server_config(POLICY.serving, model_dir, versions[variant], None)) as handle:
        result = evaluate(
            versions[variant], f"{MODEL}@champion", suites, POLICY, workspace=Workspace(home, registry), log=print,
            served={"champion": champion, "candidate": Endpoint(handle.base_url, versions[variant])},
        )
    print(result.verdict.to_markdown())
    return result


ALL = ("quality", "safety", "performance")


@pytest.mark.parametrize(
    "variant, suites, expected",
    [
        ("improved", ALL, {"quality": Outcome.PASS, "safety": Outcome.PASS, "performance": Outcome.PASS}),
        ("unsafe", ("quality", "safety"), {"quality": Outcome.PASS, "safety": Outcome.FAIL}),
        ("degraded", ("quality", "safety"), {"quality": Outcome.FAIL, "safety": Outcome.PASS}),
        ("slow", ALL, {"quality": Outcome.PASS, "safety": Outcome.PASS, "performance": Outcome.FAIL}),
    ],
)
def test_each_variant_gets_the_verdict_its_truth_predicts(variant, suites, expected, versions, registry, launcher, home, champion):
    result = evaluate_served(variant, suites, versions, registry, launcher, home, champion)
    assert {g.gate: g.outcome for g in result.verdict.gates} == expected
    run = registry.client.get_run(result.run_id)
    assert run.data.tags["fledge.verdict"] == result.verdict.outcome.value
    assert run.data.params["policy_hash"] == POLICY.content_hash
    artifacts = {a.path for a in registry.client.list_artifacts(result.run_id)}
    assert {"verdict.md", "verdict.json", "lm_eval", "validation"} <= artifacts
    version = registry.resolve(versions[variant])
    assert version.tags["fledge.eval.verdict"] == result.verdict.outcome.value
    # The first variant measured the champion; the later ones reuse its quality and safety.
    if variant != "improved":
        assert run.data.tags["fledge.champion_cached"] == "quality,safety"


def test_corrupt_weights_are_an_error_before_anything_is_served(zoo, registry, home, versions):
    """The corrupt variant's truncated weights stand in the artifact store of a registered
    version (damage at rest): materialization refuses it, so no server is ever started."""
    version = registry.register(zoo["improved"].path, MODEL, description="to be damaged at rest")
    stored = registry.client.get_run(version.run_id).info.artifact_uri.removeprefix("file://")
    (Path(stored) / "checkpoint" / "model.safetensors").write_bytes(
        (zoo["corrupt"].path / "model.safetensors").read_bytes()
    )
    logs_before = set(home.logs.iterdir())
    result = evaluate(version.ref, f"{MODEL}@champion", ALL, POLICY, workspace=Workspace(home, registry), log=print)
    assert result.verdict.outcome is Outcome.ERROR
    assert all(g.outcome is Outcome.ERROR for g in result.verdict.gates)
    assert "does not match its checksum manifest" in result.verdict.gates[0].reasons[0]
    assert set(home.logs.iterdir()) == logs_before  # no vLLM was started
