"""What one version's users experienced over a window of gateway observations: the one
summary the canary analysis, the post-promotion watch and `fledge routes` all read."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from serving.gateway.metrics import Observation


CLIENT_CANCELLED = 499  # the client hung up before the answer ended (nginx's code)


def is_refusal(status: int) -> bool:
    # 429 is the gateway's own rate limit and 499 a client that hung up: neither is the version's doing.
    return 400 <= status < 500 and status not in (429, CLIENT_CANCELLED)


class VersionWindow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    # Requests the gateway sent this version by its random split (or a session's hash): the
    # sample analysed. Pinned requests and client cancellations are counted apart below.
    requests: int = 0
    errors: int = 0  # the backend failed: 5xx, broken streams, refused connections
    rejected: int = 0  # the backend refused the request: 4xx (not 429, which the gateway sends)
    per_token_latency_s: list[float] = Field(default_factory=list)  # end-to-end latency / output tokens
    ttft_s: list[float] = Field(default_factory=list)  # streamed requests only
    itl_s: list[float] = Field(default_factory=list)  # per-request mean gap between streamed chunks
    # A client that pins a version chooses which requests it sees, so they are no sample of its
    # traffic; a cancellation ends before the answer does, so it has no latency and no outcome.
    pinned: int = 0
    cancelled: int = 0

    @classmethod
    def from_observations(cls, version: str, observations: list[Observation],
                          route_keys: set[str] | None = None) -> "VersionWindow":
        """The observations of `version`, or of every route key in `route_keys` counted as one
        version (the champion's stable and baseline instances together)."""
        keys = route_keys or {version}
        ours = [o for o in observations if o.version in keys]
        pinned = [o for o in ours if o.pinned]
        sampled = [o for o in ours if not o.pinned]
        cancelled = [o for o in sampled if o.status == CLIENT_CANCELLED]
        mine = [o for o in sampled if o.status != CLIENT_CANCELLED]
        ok = [o for o in mine if o.ok]
        return cls(
            version=version,
            requests=len(mine),
            pinned=len(pinned),
            cancelled=len(cancelled),
            errors=len(mine) - len(ok),
            rejected=sum(1 for o in ok if is_refusal(o.status)),
            per_token_latency_s=[o.e2e_s / o.output_tokens for o in ok if o.e2e_s is not None and o.output_tokens],
            ttft_s=[o.ttft_s for o in ok if o.ttft_s is not None],
            itl_s=[o.mean_itl_s for o in ok if o.mean_itl_s is not None],
        )

    @property
    def cancellation_rate(self) -> float | None:
        started = self.requests + self.cancelled
        return self.cancelled / started if started else None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def ms(self, series: str, q: float) -> float | None:
        """The q-th percentile of a latency series (`ttft_s`, `itl_s`, `per_token_latency_s`), in ms."""
        values = getattr(self, series)
        return float(np.percentile(values, q)) * 1000 if values else None
