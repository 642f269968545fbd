"""The serving plane of the team: `fledge gateway NAME... --port $FLEDGE_PLANE_PORT` (the gateway,
the rollout controller, the champions' vLLM servers), started by the stack once it is told
which models to serve (`up --serve NAME`; remembered in FLEDGE_HOME/stack/plane.json, so a later
`up` keeps serving them). Without that the stack starts no plane: a plane serves a registered
champion, and a fresh stack has none yet.

The plane answers /health 200 once every model has a routable version. Its vLLM servers outlive
it by design (a restarted gateway adopts them); `down` stops the plane first, then the fleet
through its own stop command.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from fledge.core.state import read_json, write_atomic
from fledge.stack.components.base import Component, StackContext, repo_root
from fledge.stack.components.workers import GPU_POOL_ENV, shared_urls
from fledge.stack.errors import StackError
from fledge.stack.health import http_ok
from fledge.stack.processes import LaunchSpec
from fledge.stack.records import ComponentRecord


@dataclass(frozen=True)
class PlaneConfig:
    models: tuple[str, ...]
    policy: str | None = None  # the policy YAML whose serving settings the plane uses

    def save(self, path: Path) -> None:
        import json

        write_atomic(path, json.dumps({"models": list(self.models), "policy": self.policy}, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "PlaneConfig | None":
        data = read_json(path)
        return cls(tuple(data["models"]), data.get("policy")) if data and data.get("models") else None


def configure(path: Path, models: list[str], policy: Path | None) -> PlaneConfig:
    """Record what the plane serves (`up --serve`); a named policy must exist now, not at start."""
    if policy is not None and not Path(policy).is_file():
        raise StackError(f"The plane's policy {policy} does not exist; pass the YAML file the plane should take its "
                         "serving settings from (e.g. policies/demo.yaml), or leave --plane-policy out for the default.")
    config = PlaneConfig(tuple(models), str(Path(policy).resolve()) if policy is not None else None)
    config.save(path)
    return config


class Plane(Component):
    name = "plane"
    port = "plane"
    timeout_s = 600.0  # the champions' vLLM cold starts: most of a minute each on 2 cores, more while busy
    grace_s = 30.0  # lets the gateway finish in-flight requests and the controller save its rollouts

    def __init__(self, config: PlaneConfig):
        self.config = config

    def spec(self, ctx: StackContext) -> LaunchSpec:
        cmd = [sys.executable, "-m", "fledge.cli.main", "gateway", *self.config.models,
               "--port", str(ctx.ports[self.port])]
        if self.config.policy:
            cmd += ["--policy", self.config.policy]
        # The plane dispatches nothing: the GPU pool is for release flows, not for serving.
        env = {**shared_urls(ctx), "FLEDGE_HOME": str(ctx.home), GPU_POOL_ENV: ""}
        return LaunchSpec(cmd=cmd, env=env, cwd=repo_root())

    def healthy(self, ctx: StackContext, record: ComponentRecord) -> bool:
        return http_ok(f"{ctx.url(self.port)}/health")

    def health_check(self, ctx: StackContext) -> str:
        return f"GET {ctx.url(self.port)}/health (200 once every model of {', '.join(self.config.models)} is routable)"

    def where(self, ctx: StackContext) -> str:
        return f"{ctx.url(self.port)}/v1  serving {', '.join(self.config.models)}"
