"""The admin API as Python calls: what the rollout driver, the CLI and the flows use."""

from __future__ import annotations

import os
import socket

import httpx

from fledge.core.errors import FledgeError
from serving.gateway.leases import FENCE_HEADER, Lease, LeaseHeld, LeaseLost
from serving.gateway.metrics import Observation
from serving.gateway.routes import Backend, RouteTable


class GatewayAdminError(FledgeError):
    """The admin API refused a change (4xx: the same change is refused again) or failed (5xx)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status
        self.retryable = status >= 500


class GatewayAdmin:
    def __init__(self, url: str, token: str, timeout_s: float = 10.0, fence: str | None = None,
                 model: str | None = None):
        """`fence` (MODEL:TOKEN): the lease this client's route changes are made under.
        `model`: the model whose route table its route calls address; without one they address
        the gateway's only model (a gateway serving several refuses them)."""
        self.url = url.rstrip("/")
        self.token = token
        self.fence = fence
        self.model = model
        headers = {"authorization": f"Bearer {token}", **({FENCE_HEADER: fence} if fence else {})}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s,
                                 params={"model": model} if model else None)

    def fenced(self, lease: Lease) -> "GatewayAdmin":
        """A client whose changes of the lease's model are made under `lease`: refused once the
        lease is gone."""
        return GatewayAdmin(self.url, self.token, fence=f"{lease.model}:{lease.token}", model=lease.model)

    def for_model(self, model: str) -> "GatewayAdmin":
        """A client whose route calls address `model`'s table (under this client's lease only
        when the lease is for that model: a lease never covers another model)."""
        same = self.fence is not None and self.fence.rpartition(":")[0] == model
        return GatewayAdmin(self.url, self.token, fence=self.fence if same else None, model=model)

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                payload = response.json()
                message, kind = payload["error"]["message"], payload["error"].get("type")
            except (ValueError, KeyError, TypeError):
                payload, message, kind = None, response.text, None
            if kind == "lease_held" and payload and "lease" in payload:
                raise LeaseHeld(message, Lease.model_validate(payload["lease"]))
            if kind in ("lease_lost", "lease_held"):
                raise LeaseLost(message)
            raise GatewayAdminError(f"gateway {method} {path}: HTTP {response.status_code}: {message}", response.status_code)
        return response

    # ---- leases: one operator at a time per model ------------------------------------------

    def acquire_lease(self, model: str, holder: str, purpose: str, ttl_s: float, preempt: bool = False) -> Lease:
        """For this process (its host and pid travel with it: a holder that exits holds nothing)."""
        body = {"model": model, "holder": holder, "purpose": purpose, "ttl_s": ttl_s, "preempt": preempt,
                "host": socket.gethostname(), "pid": os.getpid()}
        return Lease.model_validate(self._call("POST", "/admin/leases/acquire", json=body).json())

    def renew_lease(self, lease: Lease, ttl_s: float) -> Lease:
        body = {"model": lease.model, "token": lease.token, "ttl_s": ttl_s}
        return Lease.model_validate(self._call("POST", "/admin/leases/renew", json=body).json())

    def release_lease(self, lease: Lease) -> None:
        self._call("POST", "/admin/leases/release", json={"model": lease.model, "token": lease.token})

    def break_lease(self, model: str, by: str) -> Lease | None:
        broken = self._call("POST", "/admin/leases/break", json={"model": model, "by": by}).json()["broken"]
        return Lease.model_validate(broken) if broken else None

    def leases(self) -> dict[str, Lease]:
        return {m: Lease.model_validate(v) for m, v in self._call("GET", "/admin/leases").json().items()}

    def routes(self) -> RouteTable | None:
        """The addressed model's table; None when it has none yet. Refused for a client bound
        to no model on a gateway serving several (which one would it be?)."""
        data = self._call("GET", "/admin/routes").json()
        if data["routes"] is None and self.model is None and len(data["tables"]) > 1:
            raise GatewayAdminError(f"the gateway at {self.url} serves several models ({', '.join(data['tables'])}); "
                                    "address one: GatewayAdmin(..., model=NAME) or .for_model(NAME)", 400)
        return RouteTable.model_validate(data["routes"]) if data["routes"] else None

    def tables(self) -> dict[str, RouteTable]:
        """Every model's table on the gateway."""
        return {k: RouteTable.model_validate(t) for k, t in self._call("GET", "/admin/routes").json()["tables"].items()}

    def in_flight(self) -> dict[str, int]:
        return self._call("GET", "/admin/routes").json()["in_flight"]

    def put_routes(self, table: RouteTable) -> RouteTable:
        return RouteTable.model_validate(self._call("PUT", "/admin/routes", json=table.model_dump()).json()["routes"])

    def add_backend(self, model: str, backend: Backend) -> RouteTable:
        body = {"model": model, "backend": backend.model_dump()}
        return RouteTable.model_validate(self._call("POST", "/admin/backends", json=body).json()["routes"])

    def set_weights(self, weights: dict[str, int]) -> RouteTable:
        return RouteTable.model_validate(self._call("POST", "/admin/weights", json={"weights": weights}).json()["routes"])

    def drain(self, version: str, deadline_s: float = 30.0) -> bool:
        return self._call("POST", f"/admin/drain/{version}", params={"deadline_s": deadline_s}, timeout=deadline_s + 10).json()["drained"]

    def remove_backend(self, version: str) -> RouteTable:
        return RouteTable.model_validate(self._call("DELETE", f"/admin/backends/{version}").json()["routes"])

    def observations(self, after: int = 0) -> list[Observation]:
        """Every observation the gateway numbered above `after` (see `sequence`)."""
        return [Observation(**o) for o in self._call("GET", "/admin/observations", params={"after": after}).json()]

    def recent(self, seconds: float) -> list[Observation]:
        """The observations of the last `seconds` by the gateway's own monotonic clock."""
        return [Observation(**o) for o in self._call("GET", "/admin/observations", params={"last_seconds": seconds}).json()]

    def sequence(self) -> int:
        """The number of the gateway's newest observation: a window that starts now is every
        observation after it."""
        return int(self._call("GET", "/admin/routes").json()["sequence"])

    def ejected(self) -> dict[str, str]:
        """Route keys the gateway's outlier detection holds out of the split now, with why."""
        return self._call("GET", "/admin/routes").json()["ejected"]

    def audit_seq(self) -> int:
        """The number of the newest admin change in the audit log (0 before the first); of the
        bound model's changes, for a client bound to one."""
        entries = self._call("GET", "/admin/audit", params={"last": 1}).json()
        return entries[-1]["seq"] if entries else 0

    def effective_weights(self) -> dict[str, float]:
        """The share of new random requests each route key gets now, ejections applied."""
        return self._call("GET", "/admin/routes").json()["effective_weights"]

    def audit(self, after: int = 0) -> list[dict]:
        """The admin changes numbered above `after`: when, what, the routes before and after,
        and which token made them; only the bound model's, for a client bound to one."""
        return self._call("GET", "/admin/audit", params={"after": after}).json()

    # ---- mirrored traffic (serving.gateway.mirror): the bound model's -------------------------

    def set_mirror(self, candidate: str, baseline: str, share: float, max_in_flight: int = 1,
                   max_tokens: int | None = None) -> dict:
        """Mirror `share` of the model's live requests to both route keys (at most
        `max_in_flight` at once on each); returns the config and the pairs' sequence now."""
        body = {"candidate": candidate, "baseline": baseline, "share": share, "max_in_flight": max_in_flight,
                "max_tokens": max_tokens}
        return self._call("PUT", "/admin/mirror", json=body).json()

    def clear_mirror(self) -> None:
        self._call("DELETE", "/admin/mirror")

    def mirror(self) -> dict:
        """The model's mirror config (None when it has none), the mirrored and dropped counts,
        and the pairs' newest number."""
        return self._call("GET", "/admin/mirror").json()

    def pairs(self, after: int = 0) -> list[dict]:
        """The mirrored pairs numbered above `after` (raw text: score them, keep hashes)."""
        return self._call("GET", "/admin/pairs", params={"after": after}).json()

    def probe(self, request: dict, probe: dict, path: str = "completions") -> dict | None:
        """Send one probe to the mirror's two sides and return its pair; None when the mirror's
        backends are busy with mirrored requests (send it again later)."""
        try:
            return self._call("POST", "/admin/probe", json={"request": request, "probe": probe, "path": path}).json()
        except GatewayAdminError as error:
            if error.status == 503:
                return None
            raise

    # ---- rollouts: owned by the plane's controller ------------------------------------------

    def submit_rollout(self, spec: dict) -> dict:
        """Hand a rollout to the plane's controller; it answers with the rollout on record (the
        one already running, when it is the same rollout)."""
        return self._call("POST", "/admin/rollouts", json=spec).json()

    def rollout(self, model: str) -> dict | None:
        """The model's rollout on record (running or the last one ended), or None."""
        try:
            return self._call("GET", f"/admin/rollouts/{model}").json()
        except GatewayAdminError as error:
            if error.status == 404:
                return None
            raise

    def rollouts(self) -> list[dict]:
        return self._call("GET", "/admin/rollouts").json()

    def command_rollout(self, model: str, command: str, by: str, comment: str | None = None) -> dict:
        """pause | resume | abort, or approve | reject (a person's answer to a shadow step's
        question), by whom (recorded on the rollout and in the audit log)."""
        return self._call("POST", f"/admin/rollouts/{model}/{command}", json={"by": by, "comment": comment}).json()

    def backend_metrics(self, version: str) -> str:
        return self._call("GET", f"/admin/backend-metrics/{version}").text

    def close(self) -> None:
        self.http.close()
