"""The serving plane of one model: the gateway that takes its traffic and the vLLM instances
behind it. It outlives any release: `fledge gateway NAME` (or the demo) runs it, and the flows
reach it through what it records in FLEDGE_HOME/state/gateway.json.

The instances belong to the plane's process (their guardians watch its pid), so a promoted
candidate keeps serving after the release run ends, a release run killed half-way leaves its
canary serving for the re-run to resume, and stopping the plane stops every instance.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from fledge.evaluate import server_config
from fledge.home import FledgeHome
from fledge.policy import ReleasePolicy
from registry.refs import CHAMPION
from registry.store import ModelRegistry
from serving.fleet import STAGING, Fleet, InstanceRecord
from serving.gateway.client import GatewayAdmin
from serving.gateway.routes import Backend, RouteTable
from serving.gateway.server import BackgroundGateway, admin_token, build_gateway
from serving.launcher import LocalLauncher

PLANE_FILE = "gateway.json"


class PlaneNotRunning(RuntimeError):
    pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_plane_record(home: FledgeHome) -> dict | None:
    path = home.state / PLANE_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if "pid" in record and not _pid_alive(record["pid"]):
        return None
    return record


def record_plane(home: FledgeHome, url: str, model: str | None = None, pid: int | None = None) -> None:
    record = {"url": url, "model": model, "pid": pid or os.getpid()}
    (home.state / PLANE_FILE).write_text(json.dumps(record))


def fleet_for(home: FledgeHome) -> Fleet:
    """The instances of this home. New ones belong to the running plane's process when there
    is one (so they outlive this process), else to this process."""
    record = read_plane_record(home)
    owner = record["pid"] if record else None
    return Fleet(home.state, LocalLauncher(home.logs, owner_pid=owner))


def instance_key(version_ref: str, staging: bool = False) -> str:
    return version_ref + (STAGING if staging else "")


def serve_version(
    registry: ModelRegistry, home: FledgeHome, policy: ReleasePolicy, ref: str, fleet: Fleet, staging: bool = False,
    cores: str | None = None,
) -> tuple[InstanceRecord, bool]:
    """Resolve, materialize (every checksum verified) and serve a version, or find it served.
    Returns the instance and whether it was started now. Unpinned by default (`cores`)."""
    from serving.engine import supported_architectures

    version = registry.resolve(ref)
    key = instance_key(version.ref, staging)
    running = fleet.get(key)
    if running is not None:
        return running, False
    model_dir = registry.materialize(version.ref, home.checkpoints, supported_architectures())
    config = server_config(policy, model_dir, version.ref, cores=cores)
    return fleet.ensure(key, config)


@dataclass
class ServingPlane:
    home: FledgeHome
    model: str
    admin: GatewayAdmin
    fleet: Fleet

    @property
    def url(self) -> str:
        return self.admin.url

    def routes(self) -> RouteTable | None:
        return self.admin.routes()


def connect_plane(home: FledgeHome, model: str) -> ServingPlane:
    record = read_plane_record(home)
    fix = (f"Start it with `fledge gateway {model}` (it serves {model}@champion behind the gateway) "
           "and keep it running while releases go through.")
    if record is None:
        raise PlaneNotRunning(f"No gateway is running for this Fledge home ({home.root}). {fix}")
    if record.get("model") not in (None, model):
        raise PlaneNotRunning(f"The running gateway ({record['url']}) serves {record['model']}, not {model}. {fix}")
    admin = GatewayAdmin(record["url"], admin_token(home.state))
    try:
        admin.routes()
    except Exception as error:
        raise PlaneNotRunning(f"The gateway recorded at {record['url']} does not answer ({error}). {fix}") from None
    return ServingPlane(home, model, admin, fleet_for(home))


@contextmanager
def run_plane(
    home: FledgeHome, model: str, policy: ReleasePolicy, registry: ModelRegistry,
    host: str = "127.0.0.1", port: int | None = None, log: Callable[[str], None] = print,
) -> Iterator[ServingPlane]:
    """Run the gateway in this process with MODEL@champion behind it at 100 %; on exit stop
    the gateway and every instance of this home."""
    home.ensure()
    with BackgroundGateway(build_gateway(home.state), host=host, port=port) as gateway:
        record_plane(home, gateway.url, model)
        fleet = Fleet(home.state, LocalLauncher(home.logs, owner_pid=os.getpid()))
        admin = GatewayAdmin(gateway.url, admin_token(home.state))
        try:
            log(f"Serving {model}@{CHAMPION} behind the gateway at {gateway.url}/v1 (vLLM start: about a minute)")
            champion, _ = serve_version(registry, home, policy, f"{model}@{CHAMPION}", fleet)
            admin.put_routes(RouteTable(model=model, backends={
                champion.served_model_name: Backend(version=champion.served_model_name, base_url=champion.base_url,
                                                    role="stable", weight=100),
            }))
            yield ServingPlane(home, model, admin, fleet)
        finally:
            fleet.stop_all()
            (home.state / PLANE_FILE).unlink(missing_ok=True)
