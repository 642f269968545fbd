"""How many requests wait in each mirrored backend's queue, as its server says: vLLM's
`vllm:num_requests_waiting` gauge (requests admitted but not yet scheduled into a batch).

A mirrored request is dropped first when either side's queue is not empty: there it would take a
batch slot a user's request is waiting for. The gateway polls only the backends it mirrors to,
only while it mirrors, on its own connection pool (a backend's full pool must not stall the
reading). A reading older than `stale_after_s`, or a server that publishes no such gauge (a
scripted backend, another OpenAI-compatible server), is unknown: the in-flight bound alone
applies there.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable, Iterable

import httpx
from prometheus_client.parser import text_string_to_metric_families

WAITING_GAUGE = "vllm:num_requests_waiting"


def waiting_requests(metrics_text: str) -> float | None:
    """The requests waiting in the server's queue (summed over its engines), or None when the
    text has no such gauge."""
    total, seen = 0.0, False
    for family in text_string_to_metric_families(metrics_text):
        if family.name == WAITING_GAUGE:
            for sample in family.samples:
                total += sample.value
                seen = True
    return total if seen else None


class BackendQueues:
    def __init__(self, interval_s: float = 0.25, stale_after_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s, self.stale_after_s, self.clock = interval_s, stale_after_s, clock
        self._readings: dict[str, tuple[float, float]] = {}  # base URL -> (waiting, when read)
        self._task: asyncio.Task | None = None

    def queued(self, base_url: str) -> bool:
        """True when the backend's last fresh reading shows requests waiting."""
        reading = self._readings.get(base_url)
        return reading is not None and self.clock() - reading[1] <= self.stale_after_s and reading[0] > 0

    def reading(self, base_url: str) -> float | None:
        reading = self._readings.get(base_url)
        return reading[0] if reading is not None and self.clock() - reading[1] <= self.stale_after_s else None

    async def read(self, client: httpx.AsyncClient, base_url: str) -> None:
        try:
            response = await client.get(f"{base_url.removesuffix('/v1')}/metrics", timeout=1.0)
            waiting = waiting_requests(response.text) if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            waiting = None
        if waiting is None:
            self._readings.pop(base_url, None)
        else:
            self._readings[base_url] = (waiting, self.clock())

    def watch(self, client: Callable[[], httpx.AsyncClient], base_urls: Callable[[], Iterable[str]]) -> None:
        """Poll `base_urls()` every interval while it names any; a running watch is left as it is."""
        if self._task is not None and not self._task.done():
            return

        async def run() -> None:
            while urls := sorted(set(base_urls())):
                await asyncio.gather(*(self.read(client(), url) for url in urls))
                await asyncio.sleep(self.interval_s)
            self._readings.clear()
        self._task = asyncio.get_running_loop().create_task(run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
