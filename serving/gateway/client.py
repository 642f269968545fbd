"""The admin API as Python calls: what the rollout driver, the CLI and the flows use."""

from __future__ import annotations

import httpx

from fledge.core.errors import FledgeError
from serving.gateway.metrics import Observation
from serving.gateway.routes import Backend, RouteTable


class GatewayAdminError(FledgeError):
    """The admin API refused a change (4xx: the same change is refused again) or failed (5xx)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status
        self.retryable = status >= 500


class GatewayAdmin:
    def __init__(self, url: str, token: str, timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {token}"}, timeout=timeout_s)

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise GatewayAdminError(f"gateway {method} {path}: HTTP {response.status_code}: {message}", response.status_code)
        return response

    def routes(self) -> RouteTable | None:
        data = self._call("GET", "/admin/routes").json()
        return RouteTable.model_validate(data["routes"]) if data["routes"] else None

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
        """The number of the newest admin change in the audit log (0 before the first)."""
        entries = self.audit()
        return entries[-1]["seq"] if entries else 0

    def effective_weights(self) -> dict[str, float]:
        """The share of new random requests each route key gets now, ejections applied."""
        return self._call("GET", "/admin/routes").json()["effective_weights"]

    def audit(self, after: int = 0) -> list[dict]:
        """The admin changes numbered above `after`: when, what, the routes before and after,
        and which token made them."""
        return self._call("GET", "/admin/audit", params={"after": after}).json()

    def backend_metrics(self, version: str) -> str:
        return self._call("GET", f"/admin/backend-metrics/{version}").text

    def close(self) -> None:
        self.http.close()
