"""Canary rollouts through the gateway: the wiring behind `fledge gateway`, `fledge routes`
and `fledge canary`, and what the release flow calls. Decisions live in serving.canary."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

from fledge.home import FledgeHome
from fledge.policy import CanaryPolicy
from serving.canary.analysis import CanaryAnalysis
from serving.canary.controller import Action, RolloutState
from serving.canary.driver import RolloutDriver
from serving.gateway.client import GatewayAdmin
from serving.gateway.routes import Backend, baseline_key
from serving.gateway.server import admin_token

def connect(home: FledgeHome, url: str | None = None) -> GatewayAdmin:
    """The admin API of the gateway at `url`, or of the one `fledge gateway` runs."""
    from fledge.plane import PLANE_FILE, read_plane_record

    if url is None:
        record = read_plane_record(home)
        if record is None:
            raise FileNotFoundError(
                f"No running gateway is recorded in {home.state / PLANE_FILE}. Start one with `fledge gateway NAME`, "
                "or pass --url."
            )
        url = record["url"]
    return GatewayAdmin(url, admin_token(home.state))


def rollout_state_path(home: FledgeHome, model: str) -> Path:
    return home.state / f"rollout-{model.replace('/', '_')}.json"


def add_canary(admin: GatewayAdmin, model: str, version: str, base_url: str) -> None:
    admin.add_backend(model, Backend(version=version, base_url=base_url, role="canary", weight=0))


def add_baseline(admin: GatewayAdmin, model: str, stable_version: str, base_url: str) -> str:
    """A second instance of the stable version, at weight 0 until the rollout gives it the
    canary's share. Returns its route key."""
    key = baseline_key(stable_version)
    admin.add_backend(model, Backend(version=key, base_url=base_url, role="baseline", weight=0,
                                     served_model=stable_version))
    return key


def run_canary(
    admin: GatewayAdmin, home: FledgeHome, policy: CanaryPolicy, model: str, stable: str, canary: str,
    log: Callable[[str], None] = print,
) -> RolloutState:
    def on_tick(state: RolloutState, analysis: CanaryAnalysis | None, action: Action) -> None:
        if action.kind.value != "wait" or (analysis and analysis.outcome.value != "pass"):
            log(f"{action.kind.value:10s} canary {state.canary_weight:3d} %  {action.reason}")

    driver = RolloutDriver(admin, policy, rollout_state_path(home, model), on_tick=on_tick)
    return driver.start(model, stable, canary)


def live_figures(admin: GatewayAdmin, seconds: float = 60.0) -> dict[str, dict[str, float]]:
    """Per-version figures over the last `seconds`: requests, error rate, median TTFT and TPOT."""
    figures: dict[str, dict[str, float]] = {}
    for obs in admin.observations(since=time.time() - seconds):
        row = figures.setdefault(obs.version, {"requests": 0, "errors": 0, "ttft": [], "tpot": []})
        row["requests"] += 1
        row["errors"] += not obs.ok
        if obs.ttft_s is not None:
            row["ttft"].append(obs.ttft_s)
        if obs.e2e_s is not None and obs.output_tokens:
            row["tpot"].append(obs.e2e_s / obs.output_tokens)
    return {
        version: {
            "requests": row["requests"],
            "error_rate": row["errors"] / row["requests"],
            "ttft_p50_ms": statistics.median(row["ttft"]) * 1000 if row["ttft"] else float("nan"),
            "tpot_p50_ms": statistics.median(row["tpot"]) * 1000 if row["tpot"] else float("nan"),
        }
        for version, row in figures.items()
    }
