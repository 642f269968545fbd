"""The import contracts (pyproject.toml, [tool.importlinter]) hold for the tree, and they
would catch an import that goes up the layers: checked on a copy with one planted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fledge", "flows", "tasks", "registry", "evals", "serving")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    # The copy must shadow the installed (editable) packages: PYTHONPATH comes first.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT_IMPORTS), "--no-logo", "--no-cache", str(tree / "pyproject.toml")], cwd=tree,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture()
def tree_copy(tmp_path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.jsonl"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_tree_keeps_every_contract(tree_copy):
    result = lint_imports(tree_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("module, planted, broken", [
    ("registry/refs.py", "import flows.release", "Layers"),  # a plain layer reaching up to the flows
    ("serving/naming.py", "import evals.verdict", "Layers"),  # two plain layers are independent
    ("fledge/services/releases.py", "import prefect", "Prefect"),  # services stay usable without Prefect
    ("tasks/common.py", "import mlflow", "MLflow"),  # runs and tags live in the registry layer
])
def test_a_planted_import_breaks_its_contract(tree_copy, module, planted, broken):
    path = tree_copy / module
    path.write_text(path.read_text() + f"\n{planted}  # planted by the test\n")
    result = lint_imports(tree_copy)
    assert result.returncode != 0
    broken_section = result.stdout.split("Broken contracts", 1)[-1]
    assert broken in broken_section and module.removesuffix(".py").replace("/", ".") in broken_section, result.stdout
