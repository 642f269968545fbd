"""How the gateway protects itself and its backends: request limits, a retry budget and
outlier ejection. Plain objects with an injectable clock, so each is tested without HTTP.

Retry budget and ejection follow what service proxies do: Finagle's and Envoy's retry budgets
(retries may be at most a share of requests, so retrying on stable never doubles its load when
a canary fails) and Envoy's outlier detection (a host that refuses connections or fails
requests in a row leaves the load-balancing set for a while, before any analysis window).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable


def json_shape_problem(value: Any, max_depth: int, max_values: int) -> str | None:
    """Why a parsed JSON value is too deep or too large for the gateway, or None. Iterative,
    so a hostile nesting cannot exhaust the stack here either."""
    stack, values = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        values += 1
        if values > max_values:
            return f"the request's JSON has more than {max_values} values (the gateway's limit)"
        if depth > max_depth:
            return f"the request's JSON is nested more than {max_depth} levels deep (the gateway's limit)"
        if isinstance(item, dict):
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return None


@dataclass
class RetryBudget:
    """Each first attempt pays `ratio` of a retry into the budget, up to `reserve` retries
    saved; a retry spends one. Over any stretch, retries <= ratio x requests + reserve."""

    ratio: float
    reserve: int
    balance: float = field(init=False)

    def __post_init__(self):
        self.balance = float(self.reserve)

    def deposit(self) -> None:
        self.balance = min(float(max(self.reserve, 1)), self.balance + self.ratio)

    def withdraw(self) -> bool:
        if self.balance >= 1:
            self.balance -= 1
            return True
        return False


@dataclass
class _Health:
    consecutive_failures: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    reason: str = ""


class OutlierDetector:
    """Consecutive failures per route key; `eject_after` in a row, or one refused connection,
    take the key out of the split for `ejection_s` times the number of times it was ejected
    (capped at ten), after which it is tried again."""

    def __init__(self, eject_after: int, ejection_s: float, clock: Callable[[], float] = time.monotonic):
        self.eject_after, self.ejection_s, self.clock = eject_after, ejection_s, clock
        self.health: dict[str, _Health] = {}

    def success(self, key: str) -> None:
        self.health.setdefault(key, _Health()).consecutive_failures = 0

    def failure(self, key: str, what: str, refused: bool = False) -> bool:
        """Record a failure; True when it ejected the key now."""
        health = self.health.setdefault(key, _Health())
        health.consecutive_failures += 1
        if self._ejected(health):
            return False
        if refused or health.consecutive_failures >= self.eject_after:
            health.ejections += 1
            health.ejected_until = self.clock() + self.ejection_s * min(health.ejections, 10)
            health.reason = what if refused else f"{health.consecutive_failures} failed requests in a row (last: {what})"
            health.consecutive_failures = 0
            return True
        return False

    def _ejected(self, health: _Health) -> bool:
        return health.ejected_until > self.clock()

    def ejected(self) -> dict[str, str]:
        """The keys out of the split now, with why."""
        return {key: h.reason for key, h in self.health.items() if self._ejected(h)}

    def forget(self, key: str) -> None:
        self.health.pop(key, None)
