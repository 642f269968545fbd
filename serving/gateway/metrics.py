"""Prometheus metrics per backend version, and a window of recent observations for canary
analysis (the analysis needs per-request values, which histograms do not keep).

Every observation gets the next number of the gateway's own sequence: analysis windows are
cut by it ("every observation after number N"), never by comparing clocks, so a wall-clock
step cannot hide observations from a window or put old ones in it. The sequence starts at the
machine's monotonic clock in microseconds, so a restarted gateway numbers on above everything
its predecessor numbered (it never recorded a million observations a second) and a rollout
whose window began before the restart still sees every observation after it."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, replace

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
    pinned: bool = False  # the client chose the version (x-fledge-version): not a random sample of its traffic
    seq: int = 0  # the gateway's sequence number, given when recorded
    monotonic: float = 0.0  # the gateway's monotonic clock when recorded (for "the last N seconds")


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
        self.rejected = Counter("fledge_gateway_rejected_requests", "Requests the gateway itself turned away",
                                ["reason"], registry=self.registry)
        self.ejections = Counter("fledge_gateway_ejections", "Backends ejected by outlier detection",
                                 [*labels, "reason"], registry=self.registry)
        self.mirrored = Counter("fledge_gateway_mirrored_requests", "Live requests mirrored to a rollout's candidate "
                                "and baseline, or not mirrored because a side had its bound of mirrored requests",
                                ["model", "outcome"], registry=self.registry)
        # The route table's weights (what an operator or the rollout controller set, ejections
        # aside): the dashboard's canary weight over time, and which versions should get traffic.
        self.weights = Gauge("fledge_gateway_backend_weight", "Percent of a model's traffic the route table gives "
                             "each backend version", labels, registry=self.registry)
        self._weighted: set[tuple[str, str]] = set()
        self._observations: deque[Observation] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._last_seq = int(time.monotonic() * 1_000_000)

    def set_weights(self, weights: dict[tuple[str, str], int]) -> None:
        """Publish the weights of every (model, version) routed now; a version no longer routed
        loses its series. New values are set before old series go, so a scrape never sees a
        model without weights."""
        for (model, version), weight in weights.items():
            self.weights.labels(model, version).set(weight)
        for model, version in self._weighted - set(weights):
            self.weights.remove(model, version)
        self._weighted = set(weights)

    @property
    def last_seq(self) -> int:
        """The number of the newest observation (the sequence's start before the first): a
        window that starts now is every observation after it."""
        with self._lock:
            return self._last_seq

    def record(self, model: str, obs: Observation, itl_gaps: list[float]) -> Observation:
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
            self._last_seq += 1
            obs = replace(obs, seq=self._last_seq, monotonic=time.monotonic())
            self._observations.append(obs)
        return obs

    def observations(self, after: int = 0) -> list[Observation]:
        """Every kept observation numbered above `after`."""
        with self._lock:
            return [o for o in self._observations if o.seq > after]

    def recent(self, seconds: float) -> list[Observation]:
        """The observations of the last `seconds` by the gateway's monotonic clock (a display
        of what users see now, never an analysis window)."""
        start = time.monotonic() - seconds
        with self._lock:
            return [o for o in self._observations if o.monotonic >= start]

