"""FLEDGE_HOME/stack/env: `source` it and every command of the shell (fledge, prefect, mlflow,
a release run) uses the team stack instead of the embedded SQLite stores."""

from __future__ import annotations

import shlex
from pathlib import Path

from fledge.core.state import write_atomic


def render(variables: dict[str, str]) -> str:
    lines = ["# The team stack of this Fledge home, written by `python -m fledge.stack up`.",
             "# Use it from a shell: source this file. `python -m fledge.stack down` removes it."]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]
    return "\n".join(lines) + "\n"


def write(path: Path, variables: dict[str, str]) -> None:
    write_atomic(path, render(variables))


def read(path: Path) -> dict[str, str]:
    """The variables a `source` of the file would export (for a process that cannot source it)."""
    variables = {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            variables[name] = shlex.split(value)[0] if value else ""
    return variables
