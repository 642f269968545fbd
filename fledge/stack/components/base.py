"""What every component of the stack provides, and what they share while `up` runs.

A component is prepared (files it needs before starting: a database cluster, a config),
started from a LaunchSpec, checked for health, and finished once healthy (databases, work
pools): `finish` runs at every `up`, also for a component left running, so a step missed
by an interrupted `up` is done by the next one.
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from fledge.stack.errors import StackError
from fledge.stack.layout import StackLayout
from fledge.stack.ports import HOST
from fledge.stack.processes import LaunchSpec
from fledge.stack.records import ComponentRecord

DB_ROLE = "fledge"


def venv_tool(name: str) -> str:
    """A console script of the environment running Fledge (its mlflow, its prefect), so the
    servers run the versions Fledge was tested with, whatever PATH says."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise StackError(f"`{name}` is not installed beside {sys.executable}; run scripts/setup.sh to install Fledge's "
                         "environment, then try again.")
    return found


def repo_root() -> Path:
    """The checkout Fledge runs from: the CPU worker runs flows from it."""
    import fledge

    return Path(fledge.__file__).resolve().parents[1]


@dataclass
class StackContext:
    layout: StackLayout
    ports: dict[str, int]
    password: str

    def url(self, component: str) -> str:
        return f"http://{HOST}:{self.ports[component]}"

    def database_url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{DB_ROLE}:{self.password}@{HOST}:{self.ports['postgres']}/{database}"

    @property
    def prefect_api(self) -> str:
        return self.url("prefect") + "/api"

    @property
    def home(self) -> Path:
        return self.layout.home.root


class Component(ABC):
    name: str = ""
    port: str | None = None  # the name of its port in the record, when it listens on one
    timeout_s: float = 60.0  # to become healthy once started
    stop_signal: int = signal.SIGTERM  # asks the group leader to stop; SIGKILL to the group after grace_s
    grace_s: float = 15.0

    def timeout(self) -> float:
        return float(os.environ.get("FLEDGE_STACK_TIMEOUT_S", self.timeout_s))

    def prepare(self, ctx: StackContext) -> None:
        """Before `spec`: create what the process needs to start."""

    @abstractmethod
    def spec(self, ctx: StackContext) -> LaunchSpec:
        """How to start it."""

    @abstractmethod
    def healthy(self, ctx: StackContext, record: ComponentRecord) -> bool:
        """Whether the started process answers as it should."""

    @abstractmethod
    def health_check(self, ctx: StackContext) -> str:
        """What `healthy` asks, in words for an error message."""

    def url(self, ctx: StackContext) -> str | None:
        return ctx.url(self.port) if self.port else None

    def where(self, ctx: StackContext) -> str:
        """Where to reach it, for `up`'s and `status`' lines."""
        return self.url(ctx) or ""

    def finish(self, ctx: StackContext, started: bool) -> None:
        """Once healthy, at every `up`: the steps that make it usable (idempotent)."""
