"""Prometheus (Debian's /usr/bin/prometheus) scraping the serving plane every 2 s.

What it scrapes is not in its config: it reads the file_sd files under
FLEDGE_HOME/stack/prometheus/targets every 5 s, which the serving fleet rewrites whenever an
instance is recorded or removed (fledge.core.scrape_targets). So a new canary is scraped
seconds after it starts, without a reload. Alerting rules go to stack/prometheus/rules/*.yml.
A changed config (this module's) is applied by a reload (--web.enable-lifecycle), not a
restart, so the TSDB's head stays in memory.
"""

from __future__ import annotations

import httpx
import yaml

from fledge.core.state import write_atomic
from fledge.stack.components.base import Component, StackContext
from fledge.stack.errors import StackError
from fledge.stack.health import http_ok
from fledge.stack.layout import PROMETHEUS_BIN
from fledge.stack.ports import HOST
from fledge.stack.processes import LaunchSpec
from fledge.stack.records import ComponentRecord

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
        self.config_changed = not (path.is_file() and path.read_text() == content)
        if self.config_changed:
            write_atomic(path, content)

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
            response = httpx.post(f"{ctx.url(self.port)}/-/reload", timeout=10)
            if response.status_code != 200:
                raise StackError(f"Prometheus refused its new config ({ctx.layout.prometheus_config}): "
                                 f"{response.text.strip()}; its log: {ctx.layout.log(self.name)}.")
