"""The Prometheus alerting rules of the serving plane, rendered from one template
(alerts.template.yml) with the thresholds and windows of an AlertSettings.

The shipped alerts.yml is the template at `AlertSettings()` (production: the policy's canary
error limit and the watch's latency SLOs, windows of minutes); `AlertSettings.fast()` is the same
rules with windows of seconds, which the tests (and a demo) install to see an alert fire within
a minute. `python -m serving.monitoring.rules` writes alerts.yml again after the template changed.
"""

from __future__ import annotations

import string
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "alerts.template.yml"
SHIPPED = HERE / "alerts.yml"
UNIT_TESTS = HERE / "alerts_test.yml"
HEADER = ("# Rendered from alerts.template.yml by serving.monitoring.rules at production values: edit the\n"
          "# template, then run `python -m serving.monitoring.rules` (a unit test compares the two).\n")


def duration(seconds: float) -> str:
    """A Prometheus duration: 2m, 90s, 1h."""
    seconds = int(seconds)
    if seconds <= 0:
        raise ValueError(f"a window or `for` must be at least a second, not {seconds} s")
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class _Template(string.Template):
    delimiter = "@"  # PromQL and Go templates use $ and {{ }}; @{name} is ours, @@ a literal @


@dataclass(frozen=True)
class AlertSettings:
    """Thresholds and windows of the rules. The defaults are production's: canary.max_error_rate
    and watch.max_ttft_p95_ms / max_itl_p95_ms of policies/default.yaml (a unit test keeps them
    equal), with windows long enough that a few slow requests are not a page."""

    error_rate: float = 0.05  # a version's 5xx share above this ...
    error_window_s: int = 120  # ... over this window ...
    error_for_s: int = 60  # ... for this long
    min_requests: int = 20  # fewer in a window: the version is not judged (the canary's min_samples)
    ttft_p95_s: float = 2.0
    itl_p95_s: float = 0.5
    latency_window_s: int = 300
    latency_for_s: int = 300
    idle_window_s: int = 600  # a routed model without one request in this window ...
    idle_for_s: int = 300  # ... for this long
    down_for_s: int = 60  # a scrape target down this long

    @classmethod
    def fast(cls) -> "AlertSettings":
        """Windows of seconds (the stack scrapes and evaluates every 2 s): an alert fires within
        ~15 s of its condition. For tests and demos, never production: 5 requests are no rate."""
        return cls(error_window_s=10, error_for_s=4, min_requests=5, latency_window_s=10, latency_for_s=4,
                   idle_window_s=10, idle_for_s=4, down_for_s=4)

    @classmethod
    def from_policy(cls, policy, **overrides) -> "AlertSettings":
        """Production windows with a policy's limits (fledge.core.policy.Policy)."""
        return cls(**{"error_rate": policy.canary.max_error_rate, "min_requests": policy.canary.min_samples,
                      "ttft_p95_s": policy.watch.max_ttft_p95_ms / 1000, "itl_p95_s": policy.watch.max_itl_p95_ms / 1000,
                      **overrides})

    def values(self) -> dict[str, str]:
        raw = asdict(self)
        return {
            "error_rate": f"{self.error_rate:g}", "error_rate_percent": f"{self.error_rate:.0%}",
            "min_requests": str(self.min_requests),
            "ttft_p95_seconds": f"{self.ttft_p95_s:g}", "itl_p95_seconds": f"{self.itl_p95_s:g}",
            **{name.removesuffix("_s"): duration(raw[name]) for name in
               ("error_window_s", "error_for_s", "latency_window_s", "latency_for_s", "idle_window_s", "idle_for_s",
                "down_for_s")},
        }


def render(settings: AlertSettings | None = None) -> str:
    """The rules file for `settings` (production's when None). An unknown @{name} in the
    template is an error, never left in the output."""
    return HEADER + _Template(TEMPLATE.read_text()).substitute((settings or AlertSettings()).values())


def main(argv: list[str]) -> int:
    """Write alerts.yml from the template (or check it with --check)."""
    from serving.monitoring import write_or_check

    return write_or_check(SHIPPED, render(), "serving.monitoring.rules", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
