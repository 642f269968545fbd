"""Where the running serving plane of a Fledge home listens: the record `run_plane` writes in
FLEDGE_HOME/state. Light on imports, so a command that only needs to reach the plane (an
operator's abort) reaches it in a fraction of a second."""

from __future__ import annotations

import os
import time

from fledge.core.home import FledgeHome
from fledge.core.state import read_json


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_plane_record(home: FledgeHome) -> dict | None:
    """Where the running plane listens, the models it serves and its pid; None when no plane
    of this home runs."""
    record = read_json(home.files.plane)
    if record is None or ("pid" in record and not _pid_alive(record["pid"])):
        return None
    return record


def plane_models(record: dict) -> list[str]:
    return list(record.get("models", []))


def abort_running_rollout(home: FledgeHome, model: str, by: str, timeout_s: float = 60.0) -> dict | None:
    """Abort the model's running rollout through the plane's admin API and wait until its
    controller has put traffic (and aliases) back: what an operator's rollback does first, so
    users are back on stable before the rollback's flow run has even started. Returns the
    rollout; None when no plane serves the model or no rollout of it runs."""
    from serving.gateway.client import GatewayAdmin
    from serving.gateway.server import admin_token

    record = read_plane_record(home)
    if record is None or model not in plane_models(record):
        return None
    return abort_and_wait(GatewayAdmin(record["url"], admin_token(home.state), model=model), model, by,
                          timeout_s=timeout_s)


def abort_and_wait(admin, model: str, by: str, release_id: str | None = None, timeout_s: float = 60.0) -> dict | None:
    """Abort the model's running rollout (only the given release's, with `release_id`) and
    wait for its controller to end it. Returns the rollout as last seen (still running when
    `timeout_s` passed); None when there was none to abort."""
    from serving.gateway.client import GatewayAdminError

    view = admin.rollout(model)
    if view is None or view["end"] is not None or (release_id and view["spec"]["release_id"] != release_id):
        return None
    try:
        admin.command_rollout(model, "abort", by)
    except GatewayAdminError as error:
        if error.status != 409:  # 409: it ended between the look and the abort (another operator's abort)
            raise
    deadline = time.monotonic() + timeout_s
    while (view := admin.rollout(model)) is not None and view["end"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return view
