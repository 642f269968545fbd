"""Prometheus (Debian's /usr/bin/prometheus) scraping the serving plane every 2 s.

What it scrapes is not in its config: it reads the file_sd files under
FLEDGE_HOME/stack/prometheus/targets every 5 s, which the serving fleet rewrites whenever an
instance is recorded or removed (fledge.core.scrape_targets). So a new canary is scraped
seconds after it starts, without a reload. The serving alerts (serving/monitoring/alerts.yml,
production windows) are installed as stack/prometheus/rules/fledge-alerts.yml at every `up`;
other *.yml files there are loaded too. A changed config or rules file is applied by a reload
(--web.enable-lifecycle), not a restart, so the TSDB's head stays in memory.
"""

from __future__ import annotations

import httpx
import yaml

from fledge.core.state import write_if_changed
from fledge.stack.components.base import Component, StackContext
from fledge.stack.errors import StackError
from fledge.stack.health import http_ok
from fledge.stack.layout import PROMETHEUS_BIN
from fledge.stack.ports import HOST
from fledge.stack.processes import LaunchSpec
from fledge.stack.records import ComponentRecord
from serving.monitoring.rules import render as render_alert_rules

ALERT_RULES_FILE = "fledge-alerts.yml"
SCRAPE_INTERVAL = "2s"
TARGETS_REFRESH = "5s"


def config(ctx: StackContext) -> dict:
    layout = ctx.layout
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(layout.rules / "*.yml")],
        "scrape_configs": [
            # job_name is only the default: each file_sd entry sets its own job (fledge-gateway, vllm).
            {"job_name": "fledge-serving",
             "file_sd_configs": [{"files": [str(layout.targets / "*.json")], "refresh_interval": TARGETS_REFRESH}]},
            {"job_name": "prometheus", "static_configs": [{"targets": [f"{HOST}:{ctx.ports['prometheus']}"]}]},
        ],
    }


class Prometheus(Component):
    name = "prometheus"
    port = "prometheus"
    timeout_s = 60.0
    config_changed = False

    def prepare(self, ctx: StackContext) -> None:
        if not PROMETHEUS_BIN.is_file():
            raise StackError(f"Prometheus is not installed ({PROMETHEUS_BIN}); run scripts/stack-setup.sh (installs "
                             "Debian's prometheus) and try again.")
        path = ctx.layout.prometheus_config
        content = "# Written by fledge.stack at every `up`: edits here are overwritten.\n" + yaml.safe_dump(
            config(ctx), sort_keys=False)
        self.config_changed = write_if_changed(path, content)
        self.config_changed |= install_alert_rules(ctx.layout.rules, render_alert_rules())

    def spec(self, ctx: StackContext) -> LaunchSpec:
        layout = ctx.layout
        return LaunchSpec(
            cmd=[str(PROMETHEUS_BIN), f"--config.file={layout.prometheus_config}",
                 f"--storage.tsdb.path={layout.prometheus_data}", "--storage.tsdb.retention.time=15d",
                 f"--web.listen-address={HOST}:{ctx.ports[self.port]}", "--web.enable-lifecycle"],
            cwd=layout.prometheus)

    def healthy(self, ctx: StackContext, record: ComponentRecord) -> bool:
        return http_ok(f"{ctx.url(self.port)}/-/ready")

    def health_check(self, ctx: StackContext) -> str:
        return f"GET {ctx.url(self.port)}/-/ready"

    def finish(self, ctx: StackContext, started: bool) -> None:
        if self.config_changed and not started:
            reload(ctx.url(self.port), f"{ctx.layout.prometheus_config} or {ctx.layout.rules}",
                   ctx.layout.log(self.name))


def install_alert_rules(rules_dir, content: str) -> bool:
    """Install a rendering of the serving alerts (serving.monitoring.rules) as the stack's alert
    rules; True when the file changed (Prometheus needs a reload to see it)."""
    rules_dir.mkdir(parents=True, exist_ok=True)
    return write_if_changed(rules_dir / ALERT_RULES_FILE, content)


def reload(prometheus_url: str, what: str, log) -> None:
    """Have Prometheus read its config and rules again; an invalid file is refused by Prometheus
    (it keeps the old ones) and raised here with its reason."""
    response = httpx.post(f"{prometheus_url}/-/reload", timeout=30)
    if response.status_code != 200:
        raise StackError(f"Prometheus refused its new config ({what}): {response.text.strip()}; its log: {log}.")
