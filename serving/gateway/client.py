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

    def observations(self, since: float = 0.0) -> list[Observation]:
        return [Observation(**o) for o in self._call("GET", "/admin/observations", params={"since": since}).json()]

    def backend_metrics(self, version: str) -> str:
        return self._call("GET", f"/admin/backend-metrics/{version}").text

    def close(self) -> None:
        self.http.close()
