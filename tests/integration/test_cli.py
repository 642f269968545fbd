"""The `fledge` CLI as a user runs it: real MLflow on SQLite under a fresh FLEDGE_HOME."""

import pytest
from typer.testing import CliRunner

from fledge.cli.main import app

runner = CliRunner()


def fledge(*args):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output, result.output
    return result


@pytest.mark.parametrize(
    "command",
    [["zoo", "build"], ["register"], ["models"], ["serve"], ["demo"], ["release"], ["rollback"], ["promote"], ["status"],
     ["deploy"], ["gateway"], ["traffic"]],
    ids=lambda c: " ".join(c),
)
def test_every_command_has_help_with_an_example(command):
    result = fledge(*command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output


def test_register_then_list(fledge_home, tiny_checkpoint):
    result = fledge("register", str(tiny_checkpoint), "--name", "tiny-llama", "--alias", "champion")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "tiny-llama/1"
    second = fledge("register", str(tiny_checkpoint), "--name", "tiny-llama", "--description", "again")
    assert second.output.strip() == "tiny-llama/2"
    listing = fledge("models", "tiny-llama")
    assert listing.exit_code == 0
    assert "champion" in listing.output and "candidate" in listing.output
    assert (fledge_home / "mlflow.db").is_file()


def test_register_a_missing_path_fails_with_one_paragraph(fledge_home, tmp_path):
    result = fledge("register", str(tmp_path / "nope"), "--name", "tiny")
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_register_refuses_pickle_weights_with_the_fix(fledge_home, checkpoint_copy):
    (checkpoint_copy / "pytorch_model.bin").write_bytes(b"pickle")
    result = fledge("register", str(checkpoint_copy), "--name", "tiny")
    assert result.exit_code == 1
    assert "pickle" in result.output and "safetensors" in result.output


@pytest.mark.parametrize(
    "ref, expected",
    [("tiny", "NAME/VERSION"), ("nobody@champion", "no registered model"), ("tiny-llama@nope", "no alias 'nope'")],
)
def test_serve_with_a_bad_reference_fails_before_starting_anything(fledge_home, tiny_checkpoint, ref, expected):
    fledge("register", str(tiny_checkpoint), "--name", "tiny-llama")
    result = fledge("serve", ref)
    assert result.exit_code == 1
    assert expected in result.output


def test_models_on_an_empty_registry_says_how_to_start(fledge_home):
    result = fledge("models")
    assert result.exit_code == 0
    assert "fledge register" in result.output


def test_eval_has_help_with_an_example():
    result = fledge("eval", "--help")
    assert result.exit_code == 0 and "Example" in result.output


def test_eval_with_a_bad_policy_names_the_field_and_exits_2(fledge_home, tiny_checkpoint, tmp_path):
    fledge("register", str(tiny_checkpoint), "--name", "tiny-llama", "--alias", "champion")
    policy = tmp_path / "policy.yaml"
    from fledge.core.policy import DEFAULT_POLICY_PATH

    policy.write_text(DEFAULT_POLICY_PATH.read_text().replace("scheme: none", "scheme: int3"))
    result = fledge("eval", "tiny-llama/1", "--policy", str(policy))
    assert result.exit_code == 2
    assert "quantization.scheme" in result.output and "w8a8-int8" in result.output


def test_eval_with_an_unknown_suite_exits_2(fledge_home):
    result = fledge("eval", "tiny-llama/1", "--suite", "vibes")
    assert result.exit_code == 2
    assert "--suite must be one of" in result.output


def test_the_module_entry_point_runs_the_cli():
    """`python -m fledge.cli.main` must run the app (it once imported it and did nothing)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "fledge.cli.main", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "zoo" in result.stdout and "register" in result.stdout


def test_release_without_a_gateway_says_how_to_start_one(fledge_home, tiny_checkpoint):
    fledge("register", str(tiny_checkpoint), "--name", "tiny-llama", "--alias", "champion")
    fledge("register", str(tiny_checkpoint), "--name", "tiny-llama", "--alias", "challenger")
    result = fledge("release", "tiny-llama")
    assert result.exit_code == 2
    assert "fledge gateway tiny-llama" in result.output


def test_promote_needs_a_version_number(fledge_home):
    result = fledge("promote", "tiny-llama@challenger")
    assert result.exit_code == 1
    assert "NAME/VERSION" in result.output


def test_status_of_a_model_without_releases(fledge_home, tiny_checkpoint):
    fledge("register", str(tiny_checkpoint), "--name", "tiny-llama", "--alias", "champion")
    result = fledge("status", "tiny-llama")
    assert result.exit_code == 0, result.output
    assert "champion" in result.output and "no gateway is running" in result.output


def test_rollback_without_a_previous_version_says_what_to_do_in_one_paragraph(fledge_home, tiny_checkpoint):
    """Run as a user runs it (a process of its own), so anything Prefect or MLflow would print
    is on the same terminal: one paragraph with the fix, no traceback, registry unchanged."""
    import os
    import subprocess
    import sys

    fledge("register", str(tiny_checkpoint), "--name", "tiny-llama", "--alias", "champion")
    result = subprocess.run([sys.executable, "-m", "fledge.cli.main", "rollback", "tiny-llama"], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "COLUMNS": "300"})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    assert "no 'previous' version to roll back to" in output and "fledge promote tiny-llama/VERSION" in output
    assert len([line for line in output.splitlines() if line.strip()]) == 1, output
    assert "champion" in fledge("models", "tiny-llama").output
