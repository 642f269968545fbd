"""The Grafana dashboard of the serving plane: traffic share, TTFT, ITL and errors per version,
and each version's weight in the route table over time (the canary's steps).

Built with grafana-foundation-sdk, whose builders are generated from Grafana's published
dashboard schema: a field the schema does not have cannot be written here, which is the schema
check this repository can run without a Grafana server. The shipped dashboard.json is this
module's output; `python -m serving.monitoring.dashboard` writes it again (a unit test compares).

Every panel's queries are PromQL on the gateway's series (serving/gateway/metrics.py); the
stack's test runs each of them against the live Prometheus (`panel_queries`, `concrete`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHIPPED = HERE / "dashboard.json"
UID = "fledge-serving"
DATASOURCE = "${datasource}"  # the dashboard's datasource variable: any Prometheus the team has
SELECTOR = 'model=~"$model"'


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    unit: str
    queries: tuple[tuple[str, str], ...]  # (PromQL, legend)
    stacked: bool = False
    max_value: float | None = None


def _rate(series: str, extra: str = "") -> str:
    labels = SELECTOR + (f", {extra}" if extra else "")
    return f"rate({series}{{{labels}}}[$__rate_interval])"


def _p95(histogram: str) -> str:
    return f"histogram_quantile(0.95, sum by (model, version, le) ({_rate(histogram + '_bucket')}))"


# A version with requests but no 5xx has no 5xx series: `or ... * 0` gives it an explicit 0 %,
# so the panel shows a flat line for a healthy version instead of nothing.
_FAILED = 'status=~"5.."'
_ERRORS = (f'(sum by (model, version) ({_rate("fledge_gateway_requests_total", _FAILED)})'
           f' or sum by (model, version) ({_rate("fledge_gateway_requests_total")}) * 0)'
           f' / sum by (model, version) ({_rate("fledge_gateway_requests_total")})')

PANELS: tuple[PanelSpec, ...] = (
    PanelSpec("Traffic share per version",
              "Each version's share of the model's requests as served (ejections and retries included).",
              "percentunit",
              ((f'sum by (model, version) ({_rate("fledge_gateway_requests_total")})'
                f' / on (model) group_left sum by (model) ({_rate("fledge_gateway_requests_total")})',
                "{{version}}"),), stacked=True, max_value=1),
    PanelSpec("Canary weight over time",
              "The weight the route table gives each version (what the rollout controller or an operator set).",
              "percent", ((f"max by (model, version) (fledge_gateway_backend_weight{{{SELECTOR}}})", "{{version}}"),),
              max_value=100),
    PanelSpec("Requests per second by status",
              "Requests answered by each version, by HTTP status (599: no answer at all).", "reqps",
              ((f'sum by (version, status) ({_rate("fledge_gateway_requests_total")})', "{{version}} {{status}}"),)),
    PanelSpec("Error rate per version", "The share of each version's requests answered with a 5xx or not at all.",
              "percentunit", ((_ERRORS, "{{version}}"),)),
    PanelSpec("Time to first token, p95 per version", "Streamed requests only: time until the first chunk.", "s",
              ((_p95("fledge_gateway_time_to_first_token_seconds"), "{{version}}"),)),
    PanelSpec("Inter-token latency, p95 per version", "The gap between streamed chunks.", "s",
              ((_p95("fledge_gateway_inter_token_latency_seconds"), "{{version}}"),)),
    PanelSpec("End-to-end latency, p95 per version", "From the request to the last byte of its answer.", "s",
              ((_p95("fledge_gateway_e2e_request_latency_seconds"), "{{version}}"),)),
)


def build() -> dict:
    """The dashboard as Grafana's JSON model."""
    from grafana_foundation_sdk.builders import common as common_builders
    from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

    datasource = DataSourceRef(type_val="prometheus", uid=DATASOURCE)
    board = (dashboard.Dashboard("Fledge serving").uid(UID).tags(["fledge", "vllm", "canary"]).refresh("10s")
             .time("now-30m", "now").timezone("browser")
             .description("The gateway's view of every served version: traffic, latency, errors, canary weight.")
             .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
             .with_variable(dashboard.QueryVariable("model").label("Model").datasource(datasource)
                            .query("label_values(fledge_gateway_backend_weight, model)")
                            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).multi(True).include_all(True)))
    for spec in PANELS:
        panel = (timeseries.Panel().title(spec.title).description(spec.description).unit(spec.unit)
                 .datasource(datasource).height(8).span(12)
                 .legend(common_builders.VizLegendOptions().show_legend(True)
                         .display_mode(common.LegendDisplayMode.TABLE).placement(common.LegendPlacement.BOTTOM)
                         .calcs(["lastNotNull", "max"])))
        if spec.stacked:
            panel = panel.stacking(common_builders.StackingConfig().mode(common.StackingMode.NORMAL)).fill_opacity(40)
        if spec.max_value is not None:
            panel = panel.min(0).max(spec.max_value)
        for ref, (expr, legend) in zip("ABCDEFGH", spec.queries):
            panel = panel.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref)
                                      .datasource(datasource))
        board = board.with_panel(panel)
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def panel_queries(board: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel, as Grafana would send them."""
    return [(panel["title"], target["expr"]) for panel in board.get("panels", []) for target in panel.get("targets", [])]


def concrete(expr: str, models: str = ".+", rate_interval: str = "30s") -> str:
    """A panel query as Grafana sends it: the dashboard's variables replaced by values."""
    return expr.replace("$__rate_interval", rate_interval).replace("$model", models)


def main(argv: list[str]) -> int:
    """Write dashboard.json (or check it with --check)."""
    from serving.monitoring import write_or_check

    return write_or_check(SHIPPED, render(), "serving.monitoring.dashboard", argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
