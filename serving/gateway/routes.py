"""The gateway's routing state: which backends serve each model, their weights, and persistence.

A gateway serves several public model names; each has its own table (a `RouteTable`, the
`RouteBook` holds them all). A table maps one public name to backends keyed by version
(`NAME/VERSION`, vLLM's served model name). Weights are integers that sum to 100 over the
backends taking traffic. The book is saved atomically in FLEDGE_HOME, so a restarted gateway
comes back with the same splits.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import Collection, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fledge.core.errors import FledgeError
from fledge.core.state import write_atomic


class RouteChangeRefused(FledgeError):
    """A route-table edit that would leave the table inconsistent; the message says why."""


class Backend(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str  # the route key: NAME/VERSION, vLLM's served model name (serving.naming for a baseline)
    base_url: str  # OpenAI base URL of the vLLM server, ending in /v1
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

    def effective_weights(self, ejected: Collection[str] = ()) -> dict[str, float]:
        """The share of new random requests each backend gets now, ejections applied."""
        live = [b for b in self.candidates() if b.version not in ejected] or self.candidates()
        total, keys = sum(b.weight for b in live), {b.version for b in live}
        return {k: (100.0 * b.weight / total if k in keys and total else 0.0) for k, b in self.backends.items()}

    def choose(self, session: str | None, rng: random.Random, ejected: Collection[str] = ()) -> Backend:
        """Weighted choice; a session always maps to the same backend while weights hold.

        Sessions use weighted rendezvous hashing: each backend scores -ln(U)/weight with U a
        hash of (session, version); the lowest wins. Moving weight only moves the sessions
        that must move, and a session never flips back and forth.

        `ejected` backends (the gateway's outlier detection) are left out and their share goes
        to the others, unless that would leave none: then every backend is tried (Envoy's
        panic mode), since refusing all traffic is worse than trying a doubtful backend.
        """
        backends = self.candidates()
        if not backends:
            raise LookupError(f"no backend takes traffic for {self.model}")
        backends = [b for b in backends if b.version not in ejected] or backends
        if session is None:
            return rng.choices(backends, weights=[b.weight for b in backends])[0]

        def score(backend: Backend) -> float:
            digest = hashlib.sha256(f"{session}|{backend.version}".encode()).digest()
            u = (int.from_bytes(digest[:8], "big") + 1) / (2**64 + 1)
            return -math.log(u) / backend.weight

        return min(backends, key=score)


    # ---- edits: pure, each returns a new validated table ------------------------------------

    def _with(self, backends: dict[str, Backend]) -> "RouteTable":
        return RouteTable.model_validate({"model": self.model, "backends": {k: b.model_dump() for k, b in backends.items()}})

    def _backend(self, key: str) -> Backend:
        if key not in self.backends:
            raise RouteChangeRefused(f"{key} is not a backend of {self.model} (backends: {', '.join(self.backends) or 'none'})")
        return self.backends[key]

    def with_weights(self, weights: dict[str, int]) -> "RouteTable":
        """The named backends get these weights, every other one none; they must add up to 100."""
        unknown = sorted(set(weights) - set(self.backends))
        if unknown:
            raise RouteChangeRefused(f"unknown version(s) {unknown} for {self.model}")
        return self._with({k: b.model_copy(update={"weight": int(weights.get(k, 0))}) for k, b in self.backends.items()})

    @classmethod
    def serving_only(cls, model: str, backend: Backend) -> "RouteTable":
        """A table whose one backend takes all the traffic as stable."""
        return cls(model=model, backends={backend.version: backend.model_copy(update={"weight": 100, "role": "stable",
                                                                                     "draining": False})})

    def with_backend(self, backend: Backend) -> "RouteTable":
        """`backend` added (or replaced) at weight 0: it takes traffic only when weights say so."""
        return self._with({**self.backends, backend.version: backend.model_copy(update={"weight": 0})})

    def draining(self, key: str) -> "RouteTable":
        """`key` takes no new requests; its share goes to the stable backend (or another live one)."""
        backend = self._backend(key)
        others = [b for b in self.backends.values() if b.version != key and not b.draining]
        if not others:
            raise RouteChangeRefused(f"{key} is the only backend taking traffic; add another before draining it")
        heir = next((b for b in others if b.role == "stable"), others[0])
        return self._with({**self.backends, key: backend.model_copy(update={"weight": 0, "draining": True}),
                           heir.version: heir.model_copy(update={"weight": heir.weight + backend.weight})})

    def without(self, key: str) -> "RouteTable":
        backend = self._backend(key)
        if backend.weight:
            raise RouteChangeRefused(f"{key} still has weight {backend.weight}; drain it first")
        return self._with({k: b for k, b in self.backends.items() if k != key})

    def reconciled(self, healthy: Collection[str]) -> "RouteTable":
        """Only the `healthy` backends kept; the share of every other goes to the healthy
        stable backend (else the healthy one with the largest share). Refused when no healthy
        backend could take the traffic."""
        live = {k: b for k, b in self.backends.items() if k in healthy}
        takers = [b for b in live.values() if not b.draining]
        if not takers:
            raise RouteChangeRefused(f"no backend of {self.model} that could take its traffic answers its health check "
                                     f"(backends: {', '.join(self.backends) or 'none'})")
        heir = next((b for b in takers if b.role == "stable"), max(takers, key=lambda b: b.weight))
        lost = 100 - sum(b.weight for b in takers)
        live[heir.version] = heir.model_copy(update={"weight": heir.weight + lost, "role": "stable"})
        return self._with(live)

    def restored_on(self, live: dict[str, str]) -> "RouteTable":
        """This table (a snapshot taken before a release) put back on the instances that serve
        now: `live` maps each route key with a healthy instance to that instance's URL (a
        restarted instance answers on a new port). Keys without one are dropped, their share
        going to the stable backend; refused when none of the snapshot's backends lives."""
        moved = {k: b.model_copy(update={"base_url": live[k]}) for k, b in self.backends.items() if k in live}
        return self._with({**self.backends, **moved}).reconciled(set(moved))

    def all_to(self, key: str) -> "RouteTable":
        """`key` becomes stable with all traffic; the others stay registered at 0 % (warm for a
        switch back); baselines drain, their in-flight streams finish."""
        self._backend(key)
        backends = {}
        for k, b in self.backends.items():
            if k == key:
                backends[k] = b.model_copy(update={"role": "stable", "weight": 100, "draining": False})
            elif b.role == "baseline":
                backends[k] = b.model_copy(update={"weight": 0, "draining": True})
            else:
                backends[k] = b.model_copy(update={"role": "canary", "weight": 0})
        return self._with(backends)


class RouteBook(BaseModel):
    """Every table of a gateway, keyed by public model name: a team runs one gateway for all
    its models, and each model's split, rollout and lease are its own."""

    model_config = ConfigDict(extra="forbid")

    tables: dict[str, RouteTable] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _keyed_by_model(self) -> "RouteBook":
        wrong = [f"{key} holds the table of {table.model}" for key, table in self.tables.items() if key != table.model]
        if wrong:
            raise ValueError("each table is keyed by its model name: " + "; ".join(wrong))
        return self

    def with_table(self, table: RouteTable) -> "RouteBook":
        return RouteBook(tables={**self.tables, table.model: table})

    def holding(self, key: str) -> RouteTable | None:
        """The table with a backend under this route key (keys name their model: NAME/VERSION)."""
        return next((t for t in self.tables.values() if key in t.backends), None)


def save_routes(book: RouteBook, path: Path) -> None:
    write_atomic(path, book.model_dump_json(indent=2))  # acknowledged means durable: see fledge.core.state


def load_routes(path: Path) -> RouteBook:
    """The saved book; empty when nothing was saved. A file from a one-model gateway (a bare
    table) is read as a book of that one table."""
    if not path.is_file():
        return RouteBook()
    saved = json.loads(path.read_text())
    if "tables" not in saved:
        return RouteBook().with_table(RouteTable.model_validate(saved))
    return RouteBook.model_validate(saved)
