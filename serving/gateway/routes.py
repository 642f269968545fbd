"""The gateway's routing state: which backends serve a model, their weights, and persistence.

One public model name maps to backends keyed by version (`NAME/VERSION`, vLLM's served model
name). Weights are integers that sum to 100 over the backends taking traffic. The table is
saved atomically in FLEDGE_HOME, so a restarted gateway comes back with the same split.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


BASELINE_SUFFIX = "+baseline"


def baseline_key(version: str) -> str:
    """The route key of a baseline: a second instance of `version`, started with the canary."""
    return version + BASELINE_SUFFIX


class Backend(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str  # the route key: NAME/VERSION, vLLM's served model name (NAME/VERSION+baseline for a baseline)
    base_url: str  # OpenAI base URL of the vLLM server, ending in /v1
    # A baseline is another instance of the stable version, started with the canary so that the
    # canary is compared with an instance of the same age and history (see serving.canary).
    role: Literal["stable", "canary", "baseline"] = "stable"
    weight: int = Field(0, ge=0, le=100)
    draining: bool = False
    served_model: str | None = None  # the name the backend serves, where it is not `version` (a baseline)

    @property
    def upstream_model(self) -> str:
        return self.served_model or self.version


class RouteTable(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str  # the one name clients use
    backends: dict[str, Backend] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _weights_add_up(self) -> "RouteTable":
        live = [b for b in self.backends.values() if not b.draining]
        total = sum(b.weight for b in live)
        if live and total != 100:
            raise ValueError(f"weights of the backends taking traffic must add up to 100, not {total}")
        if any(b.draining and b.weight for b in self.backends.values()):
            raise ValueError("a draining backend must have weight 0")
        return self

    def stable(self) -> Backend | None:
        return next((b for b in self.backends.values() if b.role == "stable" and not b.draining), None)

    def candidates(self) -> list[Backend]:
        return [b for b in self.backends.values() if not b.draining and b.weight > 0]

    def choose(self, session: str | None, rng: random.Random) -> Backend:
        """Weighted choice; a session always maps to the same backend while weights hold.

        Sessions use weighted rendezvous hashing: each backend scores -ln(U)/weight with U a
        hash of (session, version); the lowest wins. Moving weight only moves the sessions
        that must move, and a session never flips back and forth.
        """
        backends = self.candidates()
        if not backends:
            raise LookupError(f"no backend takes traffic for {self.model}")
        if session is None:
            return rng.choices(backends, weights=[b.weight for b in backends])[0]
        import math

        def score(backend: Backend) -> float:
            digest = hashlib.sha256(f"{session}|{backend.version}".encode()).digest()
            u = (int.from_bytes(digest[:8], "big") + 1) / (2**64 + 1)
            return -math.log(u) / backend.weight

        return min(backends, key=score)


def save_routes(table: RouteTable, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(table.model_dump_json(indent=2))
        handle.flush()
        os.fsync(handle.fileno())  # on disk before the rename: acknowledged means durable
        temporary = handle.name
    os.replace(temporary, path)  # atomic: a crash never leaves half a file


def load_routes(path: Path) -> RouteTable | None:
    if not path.is_file():
        return None
    return RouteTable.model_validate(json.loads(path.read_text()))
