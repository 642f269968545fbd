"""The gateway: an OpenAI-compatible HTTP proxy in front of the served versions of a model.

Starlette + httpx, run by uvicorn. Weighted split between stable and canary, sticky sessions
(`x-session-id` or the `user` field), version pinning (`x-fledge-version`), streaming passed
through line by line, retries on the stable version when a backend refuses the connection or
fails before the first byte (never after bytes reached the client), draining, Prometheus
metrics per version, an authenticated admin API, optional client API keys with per-key rate
limits. Routes persist in FLEDGE_HOME.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from serving.gateway.metrics import GatewayMetrics, Observation
from serving.gateway.routes import Backend, RouteChangeRefused, RouteTable, load_routes, save_routes
from serving.gateway.sse import EventStream

# Requests may pin a version with it; every response names the version that served it.
VERSION_HEADER = "x-fledge-version"
SESSION_HEADER = "x-session-id"
RETRIED_HEADER = "x-fledge-retried-from"


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


@dataclass
class TokenBucket:
    rate: float  # requests per second
    tokens: float = 0.0
    updated: float = field(default_factory=time.monotonic)

    def __post_init__(self):
        self.tokens = max(self.rate, 1.0)

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class _BeforeFirstByte(Exception):
    """The backend failed before sending anything: safe to retry elsewhere."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class _Flight:
    """One request to one backend: counted in flight from creation, recorded exactly once.

    Only server-side failures (transport errors, HTTP 5xx) count as errors of the version;
    a client's bad request (4xx) or a client hanging up says nothing about the backend.
    """

    def __init__(self, gateway: "Gateway", model: str, backend: Backend, retried_from: str | None):
        self.gateway, self.model, self.backend, self.retried_from = gateway, model, backend, retried_from
        self.started = time.perf_counter()
        self.token_times: list[float] = []
        self.client_wants_usage = False
        self.finished = False
        gateway.in_flight[backend.version] = gateway.in_flight.get(backend.version, 0) + 1
        gateway.metrics.in_flight.labels(model, backend.version).inc()

    def token(self) -> None:
        self.token_times.append(time.perf_counter())

    def finish(self, ok: bool, status: int, tokens: int = 0, whole_response: bool = False) -> None:
        if self.finished:
            return
        self.finished = True
        version = self.backend.version
        self.gateway.in_flight[version] = max(0, self.gateway.in_flight.get(version, 1) - 1)
        self.gateway.metrics.in_flight.labels(self.model, version).dec()
        success = ok and status < 400
        if whole_response:  # not streamed: no first-token time, the latency is end to end
            elapsed = time.perf_counter() - self.started
            ttft, e2e, gaps = None, elapsed if success else None, []
        else:
            times = self.token_times
            gaps = [b - a for a, b in zip(times, times[1:])]
            ttft = times[0] - self.started if success and times else None
            e2e = times[-1] - self.started if success and times else None
        mean_itl = (sum(gaps) / len(gaps)) if success and gaps else None
        obs = Observation(time.time(), version, ok, status, ttft, e2e, tokens if success else 0, mean_itl, self.retried_from)
        self.gateway.metrics.record(self.model, obs, gaps if success else [])


class _RelayResponse(StreamingResponse):
    """Relays a backend's event stream line by line. The flight is recorded in `__call__`'s
    `finally`, which runs however the stream ends (Starlette does not close the body iterator
    when a client disconnects)."""

    def __init__(self, flight: _Flight, response: httpx.Response, headers: dict[str, str]):
        self.flight, self.upstream = flight, response
        self.events = EventStream(flight.backend.upstream_model, flight.model, strip_usage=not flight.client_wants_usage)
        self.state = {"completed": False, "broken": False}
        super().__init__(self._lines(), status_code=response.status_code, media_type="text/event-stream", headers=headers)

    async def _lines(self):
        try:
            async for data in self.upstream.aiter_raw():
                before = self.events.token_chunks
                out = self.events.feed(data)
                if self.events.token_chunks > before:
                    self.flight.token()
                if out:
                    yield out
            tail = self.events.flush()
            if tail:
                yield tail
            self.state["completed"] = True
        except httpx.TransportError:
            self.state["broken"] = True  # the backend broke mid-stream: bytes were sent, no retry
            raise

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.upstream.aclose()
            broken = self.state["broken"] or self.events.saw_error
            if self.state["completed"] or broken:
                status = 599 if broken else self.upstream.status_code
                tokens = self.events.usage_tokens or self.events.token_chunks
                self.flight.finish(ok=not broken and bool(self.flight.token_times), status=status, tokens=tokens)
            else:
                self.flight.finish(ok=True, status=499)  # the client hung up: not the backend's fault


class Gateway:
    def __init__(
        self,
        routes_path: Path,
        admin_token: str,
        api_keys: dict[str, float] | None = None,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 300.0,
        seed: int | None = None,
    ):
        self.routes_path = routes_path
        self.admin_token = admin_token
        self.api_keys = api_keys or {}
        self.buckets = {key: TokenBucket(rate) for key, rate in self.api_keys.items()}
        self.routes: RouteTable | None = load_routes(routes_path)
        self.metrics = GatewayMetrics()
        self.in_flight: dict[str, int] = {}
        self.rng = random.Random(seed)
        self.timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=30.0, pool=30.0)
        self.client: httpx.AsyncClient | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/health", self.health, methods=["GET"]),
                Route("/metrics", self.prometheus, methods=["GET"]),
                Route("/admin/routes", self.get_routes, methods=["GET"]),
                Route("/admin/routes", self.put_routes, methods=["PUT"]),
                Route("/admin/weights", self.set_weights, methods=["POST"]),
                Route("/admin/backends", self.add_backend, methods=["POST"]),
                Route("/admin/drain/{version:path}", self.drain, methods=["POST"]),
                Route("/admin/backends/{version:path}", self.remove_backend, methods=["DELETE"]),
                Route("/admin/observations", self.observations, methods=["GET"]),
                Route("/admin/backend-metrics/{version:path}", self.backend_metrics, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        self.client = httpx.AsyncClient(timeout=self.timeout, limits=httpx.Limits(max_connections=200))
        try:
            yield
        finally:
            await self.client.aclose()

    # ---- client API ------------------------------------------------------------------------

    def _client_error(self, request: Request) -> JSONResponse | None:
        if not self.api_keys:
            return None
        key = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if key not in self.api_keys:
            return _error(401, "Invalid API key: pass one of the gateway's keys as 'Authorization: Bearer KEY'.", "authentication_error")
        if not self.buckets[key].take():
            return _error(429, f"Rate limit of {self.api_keys[key]:g} requests per second exceeded for this key; retry later.", "rate_limit_error")
        return None

    async def completions(self, request: Request) -> Response:
        return await self._proxy(request, "completions")

    async def chat_completions(self, request: Request) -> Response:
        return await self._proxy(request, "chat/completions")

    async def models(self, request: Request) -> Response:
        names = [self.routes.model] if self.routes else []
        return JSONResponse({"object": "list", "data": [{"id": n, "object": "model", "owned_by": "fledge"} for n in names]})

    async def health(self, request: Request) -> Response:
        ready = bool(self.routes and self.routes.candidates())
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _pick(self, request: Request, body: dict) -> tuple[Backend | None, JSONResponse | None]:
        routes = self.routes
        if routes is None or not routes.backends:
            return None, _error(503, "The gateway has no routes yet; add backends through the admin API.", "service_unavailable")
        if body.get("model") not in (None, routes.model):
            return None, _error(404, f"The model '{body.get('model')}' does not exist here; use '{routes.model}'.", "not_found_error")
        pinned = request.headers.get(VERSION_HEADER)
        if pinned:
            backend = routes.backends.get(pinned)
            if backend is None or backend.draining:
                return None, _error(404, f"Version '{pinned}' is not routable here (known: {', '.join(routes.backends)}).", "not_found_error")
            return backend, None
        session = request.headers.get(SESSION_HEADER) or body.get("user")
        try:
            return routes.choose(session, self.rng), None
        except LookupError as error:
            return None, _error(503, str(error), "service_unavailable")

    async def _proxy(self, request: Request, path: str) -> Response:
        refused = self._client_error(request)
        if refused:
            return refused
        try:
            body = await request.json()
        except ValueError:  # not JSON, or not UTF-8
            return _error(400, "The request body is not JSON.")
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.")
        backend, refused = self._pick(request, body)
        if refused:
            return refused
        pinned = VERSION_HEADER in request.headers
        try:
            return await self._forward(backend, path, body, retried_from=None)
        except _BeforeFirstByte as failure:
            stable = self.routes.stable()
            if pinned or stable is None or stable.version == backend.version:
                return _error(502, f"Backend {backend.version} failed: {failure}", "api_error")
            self.metrics.retries.labels(self.routes.model, backend.version, failure.reason).inc()
            try:
                return await self._forward(stable, path, body, retried_from=backend.version)
            except _BeforeFirstByte as second:
                return _error(502, f"Backends {backend.version} and {stable.version} failed: {second}", "api_error")

    async def _forward(self, backend: Backend, path: str, body: dict, retried_from: str | None) -> Response:
        flight = _Flight(self, self.routes.model, backend, retried_from)
        payload = {**body, "model": backend.upstream_model}
        if body.get("stream"):
            # Counted tokens, not chunks (see sse.py); the usage event is taken out again for a
            # client that did not ask for it.
            options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
            flight.client_wants_usage = bool(options.get("include_usage"))
            payload["stream_options"] = {**options, "include_usage": True}
        request = self.client.build_request("POST", f"{backend.base_url}/{path}", json=payload)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.TransportError as error:  # refused, reset, timed out: nothing reached the client
            flight.finish(ok=False, status=599)
            raise _BeforeFirstByte(f"{type(error).__name__}: {error}", type(error).__name__) from error
        if response.status_code >= 500:
            await response.aclose()
            flight.finish(ok=False, status=response.status_code)
            raise _BeforeFirstByte(f"HTTP {response.status_code}", f"HTTP {response.status_code}")
        headers = {VERSION_HEADER: backend.version, **({RETRIED_HEADER: retried_from} if retried_from else {})}
        if body.get("stream") and response.status_code < 400:
            return _RelayResponse(flight, response, headers)
        try:
            content = await response.aread()
        except httpx.TransportError as error:
            flight.finish(ok=False, status=599)
            raise _BeforeFirstByte(f"{type(error).__name__}: {error}", type(error).__name__) from error
        finally:
            await response.aclose()
        tokens = 0
        try:
            data = json.loads(content)
            tokens = (data.get("usage") or {}).get("completion_tokens", 0)
            if data.get("model") == backend.upstream_model:
                data["model"] = flight.model
                content = json.dumps(data).encode()
        except (ValueError, AttributeError):
            pass
        flight.finish(ok=True, status=response.status_code, tokens=tokens, whole_response=True)
        return Response(content, status_code=response.status_code, media_type="application/json", headers=headers)

    # ---- admin API ---------------------------------------------------------------------------

    def _admin_error(self, request: Request) -> JSONResponse | None:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, f"Bearer {self.admin_token}".encode()):
            return _error(401, "Admin API: pass the gateway's admin token as 'Authorization: Bearer TOKEN'.", "authentication_error")
        return None

    def _commit(self, table: RouteTable) -> JSONResponse:
        save_routes(table, self.routes_path)  # persist first: a crash never loses an acknowledged change
        self.routes = table
        return self._routes_json()

    def _routes_json(self) -> JSONResponse:
        payload = self.routes.model_dump() if self.routes else None
        return JSONResponse({"routes": payload, "in_flight": dict(self.in_flight)})

    async def _admin(self, request: Request, change) -> Response:
        refused = self._admin_error(request)
        if refused:
            return refused
        try:
            body = await request.json() if request.method in ("PUT", "POST") and await request.body() else {}
            return await change(body)
        except (RouteChangeRefused, ValueError, KeyError) as error:  # ValueError: pydantic's validation
            return _error(400, str(error))

    async def get_routes(self, request: Request) -> Response:
        return await self._admin(request, lambda body: _async(self._routes_json()))

    async def put_routes(self, request: Request) -> Response:
        return await self._admin(request, lambda body: _async(self._commit(RouteTable.model_validate(body))))

    def _table(self) -> RouteTable:
        if self.routes is None:
            raise RouteChangeRefused("the gateway has no routes yet; add a backend first")
        return self.routes

    async def set_weights(self, request: Request) -> Response:
        return await self._admin(request, lambda body: _async(self._commit(self._table().with_weights(body["weights"]))))

    async def add_backend(self, request: Request) -> Response:
        async def change(body):
            backend = Backend.model_validate(body["backend"])
            if self.routes is None or body.get("model", self.routes.model) != self.routes.model:
                return self._commit(RouteTable.serving_only(body["model"], backend))
            return self._commit(self.routes.with_backend(backend))
        return await self._admin(request, change)

    async def drain(self, request: Request) -> Response:
        version = request.path_params["version"]

        async def change(body):
            deadline_s = float(request.query_params.get("deadline_s", "30"))
            self._commit(self._table().draining(version))
            end = time.monotonic() + deadline_s
            while self.in_flight.get(version, 0) and time.monotonic() < end:
                await asyncio.sleep(0.05)
            return JSONResponse({"drained": self.in_flight.get(version, 0) == 0, "in_flight": self.in_flight.get(version, 0),
                                 "routes": self.routes.model_dump()})
        return await self._admin(request, change)

    async def remove_backend(self, request: Request) -> Response:
        version = request.path_params["version"]

        return await self._admin(request, lambda body: _async(self._commit(self._table().without(version))))

    async def observations(self, request: Request) -> Response:
        async def change(body):
            since = float(request.query_params.get("since", "0"))
            return JSONResponse([o.__dict__ for o in self.metrics.observations(since)])
        return await self._admin(request, change)

    async def backend_metrics(self, request: Request) -> Response:
        version = request.path_params["version"]

        async def change(body):
            backend = self.routes.backends[version]
            response = await self.client.get(f"{backend.base_url.removesuffix('/v1')}/metrics")
            return PlainTextResponse(response.text, status_code=response.status_code, media_type=CONTENT_TYPE_LATEST)
        return await self._admin(request, change)


async def _async(value):
    return value
