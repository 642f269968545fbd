"""Prometheus metrics per backend version, and a window of recent observations for canary
analysis (the analysis needs per-request values, which histograms do not keep)."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
TOKEN_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1)


@dataclass(frozen=True)
class Observation:
    """One proxied request, as canary analysis sees it."""

    at: float  # wall-clock time the request finished
    version: str
    ok: bool
    status: int
    ttft_s: float | None
    e2e_s: float | None
    output_tokens: int
    mean_itl_s: float | None
    retried_from: str | None = None


class GatewayMetrics:
    def __init__(self, window: int = 20000):
        self.registry = CollectorRegistry()
        labels = ["model", "version"]
        self.requests = Counter("fledge_gateway_requests", "Requests by backend version and HTTP status",
                                [*labels, "status"], registry=self.registry)
        self.ttft = Histogram("fledge_gateway_time_to_first_token_seconds", "Time to first token",
                              labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.itl = Histogram("fledge_gateway_inter_token_latency_seconds", "Gap between streamed chunks",
                             labels, buckets=TOKEN_BUCKETS, registry=self.registry)
        self.e2e = Histogram("fledge_gateway_e2e_request_latency_seconds", "End-to-end request latency",
                             labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tokens = Counter("fledge_gateway_output_tokens", "Output tokens", labels, registry=self.registry)
        self.in_flight = Gauge("fledge_gateway_in_flight_requests", "Requests being served", labels, registry=self.registry)
        self.retries = Counter("fledge_gateway_retries", "Requests retried on the stable version",
                               [*labels, "reason"], registry=self.registry)
        self._observations: deque[Observation] = deque(maxlen=window)
        self._lock = threading.Lock()

    def record(self, model: str, obs: Observation, itl_gaps: list[float]) -> None:
        self.requests.labels(model, obs.version, str(obs.status)).inc()
        if obs.ttft_s is not None:
            self.ttft.labels(model, obs.version).observe(obs.ttft_s)
        if obs.e2e_s is not None:
            self.e2e.labels(model, obs.version).observe(obs.e2e_s)
        for gap in itl_gaps:
            self.itl.labels(model, obs.version).observe(gap)
        if obs.output_tokens:
            self.tokens.labels(model, obs.version).inc(obs.output_tokens)
        with self._lock:
            self._observations.append(obs)

    def observations(self, since: float = 0.0) -> list[Observation]:
        with self._lock:
            return [o for o in self._observations if o.at >= since]

