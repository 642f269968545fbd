"""A picture of a canary as Prometheus saw it: each version's route-table weight and its share
of the requests actually served, over the rollout's minutes (the README's canary timeline).

The data is the dashboard's own two panels (serving.monitoring.dashboard), asked of Prometheus'
range API for one model and one time span, so the picture shows what a team's Grafana would.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import httpx

from serving.monitoring.dashboard import PANELS, concrete

WEIGHT_PANEL, SHARE_PANEL = "Canary weight over time", "Traffic share per version"


def query_range(prometheus_url: str, expr: str, start: float, end: float, step_s: float) -> list[dict]:
    response = httpx.get(f"{prometheus_url}/api/v1/query_range",
                         params={"query": expr, "start": start, "end": end, "step": step_s}, timeout=30)
    body = response.json()
    if response.status_code != 200 or body.get("status") != "success":
        raise RuntimeError(f"Prometheus refused {expr!r}: {body.get('error', response.text)}")
    return body["data"]["result"]


def _panel_expr(title: str) -> str:
    return next(spec.queries[0][0] for spec in PANELS if spec.title == title)


def canary_series(prometheus_url: str, model: str, start: float, end: float, step_s: float = 2.0,
                  rate_interval: str = "10s") -> dict[str, dict[str, list[tuple[float, float]]]]:
    """{"weight" | "share": {version: [(unix time, value)]}} for `model` over [start, end]."""
    found = {}
    for key, title in (("weight", WEIGHT_PANEL), ("share", SHARE_PANEL)):
        expr = concrete(_panel_expr(title), models=model, rate_interval=rate_interval)
        found[key] = {series["metric"].get("version", "?"): [(float(t), float(v)) for t, v in series["values"]]
                      for series in query_range(prometheus_url, expr, start, end, step_s)}
    return found


def plot_canary_timeline(series: dict, model: str, path: Path, events: list[tuple[float, str]] = ()) -> Path:
    """Two stacked plots sharing the time axis: the weights set, the shares served. `events`
    (unix time, label) are drawn as vertical lines, e.g. the approval and the promotion."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(series.get(key) for key in ("weight", "share")):
        raise ValueError(f"Prometheus has no weight or traffic series of {model} in that span: nothing to draw")
    figure, (weights, shares) = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    for version, points in sorted(series.get("weight", {}).items()):
        weights.step([datetime.fromtimestamp(t) for t, _ in points], [v for _, v in points], where="post",
                     label=version, linewidth=2)
    for version, points in sorted(series.get("share", {}).items()):
        shares.plot([datetime.fromtimestamp(t) for t, _ in points], [100 * v for _, v in points], label=version)
    weights.set_ylabel("route weight (%)")
    shares.set_ylabel("requests served (%)")
    for axis in (weights, shares):
        axis.set_ylim(-5, 105)
        axis.grid(alpha=0.3)
        axis.legend(loc="center left", fontsize=8)
        for at, label in events:
            axis.axvline(datetime.fromtimestamp(at), color="grey", linestyle="--", linewidth=1)
    for at, label in events:
        weights.annotate(label, (datetime.fromtimestamp(at), 102), fontsize=8, rotation=0, ha="left", va="bottom")
    weights.set_title(f"Canary of {model} as Prometheus scraped it from the gateway")
    shares.set_xlabel("time")
    figure.autofmt_xdate()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
