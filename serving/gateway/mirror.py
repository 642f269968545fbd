"""Mirrored traffic: a share of a model's live requests also sent to a rollout's candidate and to
its baseline, both answers kept as a pair for the rollout controller to score.

The client's answer never waits for a mirror and never is a mirrored answer: the gateway
answers the client from whichever backend its split chose, and mirrors in a task of its own.
Mirrored load is bounded: a request is mirrored only when neither side has `max_in_flight`
mirrored requests running already (one by default), so mirrored requests never queue behind
each other on a backend, and only when neither side's server has requests waiting in its queue
(serving.gateway.queues), so a mirror never takes a batch slot a user waits for; what is not
mirrored is counted as dropped, by reason. Probes (known-answer and red-team requests the controller sends
through the admin API) are mirrored the same way and never reach the users' figures.

Pairs are numbered by the gateway's own sequence (like observations) and kept in memory, a
bounded window, for the controller to read after the number it saw last. They hold raw text:
the admin API that serves them is authenticated, and the controller stores only hashes unless
the policy allows raw text.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Callable

import httpx
from pydantic import BaseModel, ConfigDict, Field

from serving.gateway.routes import Backend


class MirrorConfig(BaseModel):
    """What the controller asks for: the pair's two route keys and the share mirrored."""

    model_config = ConfigDict(extra="forbid")

    candidate: str
    baseline: str
    share: float = Field(ge=0, le=1)
    max_in_flight: int = Field(1, ge=1)
    max_tokens: int | None = Field(None, ge=1, description="A cap on mirrored requests' max_tokens (bounds their cost).")


@dataclass
class MirroredAnswer:
    version: str
    status: int  # 599: no answer
    latency_s: float | None = None
    output_tokens: int = 0
    text: str | None = None
    error: str | None = None


@dataclass
class MirroredPair:
    seq: int
    at: float
    model: str
    path: str  # completions or chat/completions
    prompt: str  # the prompt, or the chat messages as JSON
    deterministic: bool  # temperature 0
    baseline: MirroredAnswer
    candidate: MirroredAnswer
    probe: dict | None = None  # the probe as the controller sent it (id, kind, expected answer)

    def to_json(self) -> dict:
        return asdict(self)


def prompt_of(path: str, body: dict) -> str:
    if path.startswith("chat"):
        return json.dumps(body.get("messages"), sort_keys=True, ensure_ascii=False)
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


def is_deterministic(body: dict) -> bool:
    """Greedy decoding: the same request gives the same answer on the same version. OpenAI's
    default temperature is 1, so a request that sets none is sampled."""
    temperature = body.get("temperature")
    return isinstance(temperature, (int, float)) and temperature == 0 and body.get("n", 1) == 1


def _answer_text(path: str, data: dict) -> str | None:
    choices = data.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        return None
    if path.startswith("chat"):
        return ((choices[0].get("message") or {}).get("content")) or ""
    return choices[0].get("text") or ""


@dataclass
class _Mirror:
    config: MirrorConfig
    in_flight: dict[str, int] = field(default_factory=dict)


class MirrorBook:
    """The mirrors of every model the gateway serves, their in-flight counts and the pairs."""

    def __init__(self, window: int = 5000, sequence_start: int | None = None):
        self._mirrors: dict[str, _Mirror] = {}
        self._pairs: deque[MirroredPair] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._last_seq = sequence_start if sequence_start is not None else int(time.monotonic() * 1_000_000)
        self.tasks: set[asyncio.Task] = set()  # running mirrors: held so they are not collected mid-flight
        self.mirrored = 0
        self.dropped = 0  # every request not mirrored for want of room, of which:
        self.dropped_queued = 0  # a side's server had requests waiting

    def configure(self, model: str, config: MirrorConfig | None) -> None:
        with self._lock:
            if config is None:
                self._mirrors.pop(model, None)
            elif model in self._mirrors:
                self._mirrors[model].config = config  # in-flight counts carry over
            else:
                self._mirrors[model] = _Mirror(config)

    def configs(self) -> dict[str, MirrorConfig]:
        with self._lock:
            return {model: mirror.config for model, mirror in self._mirrors.items()}

    def config(self, model: str) -> MirrorConfig | None:
        with self._lock:
            mirror = self._mirrors.get(model)
            return mirror.config if mirror else None

    def take_slot(self, model: str, draw: Callable[[], float] | None,
                  queued: Callable[[str], bool] = lambda key: False) -> MirrorConfig | None:
        """The config when this request is to be mirrored now (`draw()` below the share, both
        sides below their in-flight bound and neither side `queued`), with a slot taken on each
        side; else None. No `draw`: a probe, mirrored whatever the share."""
        with self._lock:
            mirror = self._mirrors.get(model)
            if mirror is None or (draw is not None and draw() >= mirror.config.share):
                return None
            config = mirror.config
            sides = (config.candidate, config.baseline)
            if any(queued(key) for key in sides):
                self.dropped += 1
                self.dropped_queued += 1
                return None
            if any(mirror.in_flight.get(key, 0) >= config.max_in_flight for key in sides):
                self.dropped += 1
                return None
            for key in (config.candidate, config.baseline):
                mirror.in_flight[key] = mirror.in_flight.get(key, 0) + 1
            self.mirrored += 1
            return config

    def free_slot(self, model: str, config: MirrorConfig) -> None:
        with self._lock:
            mirror = self._mirrors.get(model)
            if mirror is None:
                return
            for key in (config.candidate, config.baseline):
                mirror.in_flight[key] = max(0, mirror.in_flight.get(key, 1) - 1)

    def record(self, pair: MirroredPair) -> MirroredPair:
        with self._lock:
            self._last_seq += 1
            pair.seq = self._last_seq
            self._pairs.append(pair)
            return pair

    def pairs(self, model: str | None = None, after: int = 0) -> list[MirroredPair]:
        with self._lock:
            return [p for p in self._pairs if p.seq > after and model in (None, p.model)]

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._last_seq


async def ask(pool: httpx.AsyncClient, backend: Backend, path: str, body: dict) -> MirroredAnswer:
    """One side of a pair: the request as the client sent it, not streamed (the whole answer is
    scored), under the backend's own served name."""
    payload = {**body, "model": backend.upstream_model, "stream": False}
    payload.pop("stream_options", None)
    started = time.perf_counter()
    try:
        response = await pool.post(f"{backend.base_url}/{path}", json=payload)
    except httpx.HTTPError as error:
        return MirroredAnswer(backend.version, 599, error=f"{type(error).__name__}: {error}")
    latency = time.perf_counter() - started
    if response.status_code >= 400:
        return MirroredAnswer(backend.version, response.status_code, latency, error=response.text[:300])
    try:
        data = response.json()
    except ValueError:
        return MirroredAnswer(backend.version, 599, latency, error="the answer is not JSON")
    tokens = int((data.get("usage") or {}).get("completion_tokens") or 0)
    return MirroredAnswer(backend.version, response.status_code, latency, tokens, _answer_text(path, data))


async def mirror_pair(pools, model: str, candidate: Backend, baseline: Backend, path: str, body: dict,
                      config: MirrorConfig, probe: dict | None = None) -> MirroredPair:
    """Both sides at once (the same moment's load on each); `pools(backend)` gives a backend's
    connection pool."""
    if config.max_tokens is not None:
        body = {**body, "max_tokens": min(int(body.get("max_tokens") or config.max_tokens), config.max_tokens)}
    baseline_answer, candidate_answer = await asyncio.gather(
        ask(pools(baseline), baseline, path, body), ask(pools(candidate), candidate, path, body))
    return MirroredPair(seq=0, at=time.time(), model=model, path=path, prompt=prompt_of(path, body),
                        deterministic=is_deterministic(body), baseline=baseline_answer, candidate=candidate_answer,
                        probe=probe)
