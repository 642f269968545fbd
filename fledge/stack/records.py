"""The stack's record, FLEDGE_HOME/state/stack.json: for each component the process `up`
started (pid, which leads its own process group, its log, the digest of how it was started)
and, kept across `down`, the ports chosen at the first `up`, so URLs stay the same.

`down` stops exactly the processes named here (and their groups), never anything found by
name; `up` compares the digest to decide whether a running component still runs the wanted
configuration.
"""

from __future__ import annotations

import fcntl
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, ConfigDict, Field

from fledge.core.state import read_json, write_json


class ComponentRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    pid: int
    port: int | None = None
    log: str
    started_at: float  # epoch seconds
    spec: str  # digest of command, environment and working directory (launch.LaunchSpec.digest)
    url: str | None = None


class StackRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    home: str
    pg_root: str | None = None
    ports: dict[str, int] = Field(default_factory=dict)
    components: dict[str, ComponentRecord] = Field(default_factory=dict)


def load(path: Path, home: Path) -> StackRecord:
    raw = read_json(path)
    return StackRecord.model_validate(raw) if raw else StackRecord(home=str(home))


def save(path: Path, record: StackRecord) -> None:
    write_json(path, record.model_dump(mode="json"))


@contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """One `up` or `down` of a home at a time: two would start every component twice."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
