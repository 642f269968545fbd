"""The gateway: an OpenAI-compatible HTTP proxy in front of the served versions of its models.

One gateway serves several public model names, each with its own route table (a request's
`model` picks it; admin calls name it with `?model=NAME`, or address the only one).

Starlette + httpx, run by uvicorn. Weighted split between stable and canary, sticky sessions
(`x-session-id` or the `user` field), version pinning (`x-fledge-version`), streaming passed
through line by line, retries on the stable version when a backend refuses the connection or
fails before the first byte (never after bytes reached the client) within a retry budget,
outlier ejection, draining, Prometheus metrics per version, an authenticated and audited admin
API, optional client API keys with per-key rate limits. Routes persist in FLEDGE_HOME.

It protects itself (serving.gateway.guards, limits from the policy's `serving.gateway`): a body
over the size limit is a 413, JSON nested too deeply or too large a 400, a request over the
concurrency limit a 503 with Retry-After, and each backend has its own connection pool, so the
gateway's own saturation is answered as such and never recorded against a version.
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
from typing import Callable, Protocol

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from fledge.core.policy import GatewayPolicy
from serving.gateway.audit import AuditLog
from serving.gateway.guards import OutlierDetector, RetryBudget, json_shape_problem
from serving.gateway.leases import FENCE_HEADER, LeaseHeld, LeaseLost, LeaseTable
from serving.gateway.metrics import GatewayMetrics, Observation
from serving.gateway.mirror import MirrorBook, MirrorConfig, mirror_pair
from serving.gateway.queues import BackendQueues
from serving.gateway.routes import Backend, RouteBook, RouteChangeRefused, RouteTable, load_routes, save_routes
from serving.gateway.sse import EventStream
from serving.errors import RolloutConflict

# Requests may pin a version with it; every response names the version that served it.
VERSION_HEADER = "x-fledge-version"
SESSION_HEADER = "x-session-id"
RETRIED_HEADER = "x-fledge-retried-from"


def _error(status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status, headers=headers)


class RolloutService(Protocol):
    """What the admin API's /admin/rollouts endpoints call: the serving plane's rollout
    controller (fledge.services.controller). Plain JSON in and out; a refusal raises
    serving.errors.RolloutConflict (409) or KeyError (404)."""

    def submit(self, spec: dict) -> dict: ...

    def get(self, model: str) -> dict: ...

    def list(self) -> list[dict]: ...

    def command(self, model: str, command: str, by: str, comment: str | None = None) -> dict: ...


# approve | reject: a person's answer to the question a shadow step asked (a discordance to judge).
ROLLOUT_COMMANDS = ("pause", "resume", "abort", "approve", "reject")


class _Refused(Exception):
    """The gateway itself refuses the request (it counts for no version)."""

    def __init__(self, response: JSONResponse, reason: str):
        super().__init__(reason)
        self.response, self.reason = response, reason


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

    def __init__(self, gateway: "Gateway", model: str, backend: Backend, retried_from: str | None, pinned: bool = False):
        self.gateway, self.model, self.backend, self.retried_from = gateway, model, backend, retried_from
        self.pinned = pinned
        self.started = time.perf_counter()
        self.token_times: list[float] = []
        self.client_wants_usage = False
        self.finished = False
        gateway.in_flight[backend.version] = gateway.in_flight.get(backend.version, 0) + 1
        gateway.metrics.in_flight.labels(model, backend.version).inc()

    def token(self) -> None:
        self.token_times.append(time.perf_counter())

    def _leave(self) -> bool:
        if self.finished:
            return False
        self.finished = True
        version = self.backend.version
        self.gateway.in_flight[version] = max(0, self.gateway.in_flight.get(version, 1) - 1)
        self.gateway.metrics.in_flight.labels(self.model, version).dec()
        return True

    def abandon(self) -> None:
        """The request never reached the backend because of the gateway itself (its pool for
        the backend was full): nothing is recorded against the version."""
        self._leave()

    def finish(self, ok: bool, status: int, tokens: int = 0, whole_response: bool = False, refused: bool = False) -> None:
        if not self._leave():
            return
        version = self.backend.version
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
        obs = Observation(time.time(), version, ok, status, ttft, e2e, tokens if success else 0, mean_itl, self.retried_from,
                          pinned=self.pinned)
        self.gateway.metrics.record(self.model, obs, gaps if success else [])
        if status == 499:
            return  # a client hanging up says nothing about the backend
        if ok and status < 500:
            self.gateway.outliers.success(version)
        elif self.gateway.outliers.failure(version, f"HTTP {status}" if status != 599 else "no answer", refused=refused):
            self.gateway.metrics.ejections.labels(self.model, version, "refused" if refused else "failures").inc()


class _RelayResponse(StreamingResponse):
    """Relays a backend's event stream line by line. The flight is recorded in `__call__`'s
    `finally`, which runs however the stream ends (Starlette does not close the body iterator
    when a client disconnects)."""

    def __init__(self, flight: _Flight, response: httpx.Response, headers: dict[str, str]):
        self.flight, self.upstream = flight, response
        self.on_close: Callable[[], None] | None = None  # the gateway's admission slot, freed when the stream ends
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
                if self.events.done:
                    # A client stops reading at [DONE] and may hang up before the backend closes
                    # its side: the answer was whole, so it is no cancellation.
                    self.state["completed"] = True
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
            if self.on_close:
                self.on_close()
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
        limits: GatewayPolicy,
        audit_path: Path | None = None,
        leases_path: Path | None = None,
        api_keys: dict[str, float] | None = None,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 300.0,
        seed: int | None = None,
        controller_token: str | None = None,
    ):
        """`controller_token`: the plane's own rollout controller authenticates with it; its
        changes carry no lease's fence (it acts on the rollouts it owns, whoever holds the
        lease). Never written anywhere: it lives and dies with the plane's process."""
        self.routes_path = routes_path
        self.admin_token = admin_token
        self.controller_token = controller_token
        self.rollouts: RolloutService | None = None  # set by the plane once its controller runs
        self.limits = limits
        self.audit = AuditLog(audit_path or routes_path.with_name("gateway-audit.jsonl"))
        self.leases = LeaseTable(leases_path or routes_path.with_name("leases.json"))
        self.api_keys = api_keys or {}
        self.buckets = {key: TokenBucket(rate) for key, rate in self.api_keys.items()}
        self.book: RouteBook = load_routes(routes_path)
        self.metrics = GatewayMetrics()
        self._publish_weights()
        self.mirrors = MirrorBook()
        self.queues = BackendQueues()  # the mirrored backends' queues: a mirror is dropped while one waits
        self.in_flight: dict[str, int] = {}
        self.active = 0  # client requests being served, streams until their last byte
        self.retry_budget = RetryBudget(limits.retry_budget, limits.retry_reserve)
        self.outliers = OutlierDetector(limits.eject_after_failures, limits.ejection_seconds)
        self.rng = random.Random(seed)
        # A full pool waits at most a second: the gateway is saturated, and says so (503).
        self.timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s, write=30.0, pool=1.0)
        self.pools: dict[str, httpx.AsyncClient] = {}
        self.health_client: httpx.AsyncClient | None = None  # its own: a backend's full pool must not fail its health
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
                Route("/admin/audit", self.get_audit, methods=["GET"]),
                Route("/admin/leases", self.get_leases, methods=["GET"]),
                Route("/admin/leases/acquire", self.acquire_lease, methods=["POST"]),
                Route("/admin/leases/renew", self.renew_lease, methods=["POST"]),
                Route("/admin/leases/release", self.release_lease, methods=["POST"]),
                Route("/admin/leases/break", self.break_lease, methods=["POST"]),
                Route("/admin/backend-metrics/{version:path}", self.backend_metrics, methods=["GET"]),
                Route("/admin/mirror", self.get_mirror, methods=["GET"]),
                Route("/admin/mirror", self.put_mirror, methods=["PUT"]),
                Route("/admin/mirror", self.delete_mirror, methods=["DELETE"]),
                Route("/admin/pairs", self.get_pairs, methods=["GET"]),
                Route("/admin/probe", self.probe, methods=["POST"]),
                Route("/admin/rollouts", self.list_rollouts, methods=["GET"]),
                Route("/admin/rollouts", self.submit_rollout, methods=["POST"]),
                Route("/admin/rollouts/{model:path}/{command}", self.command_rollout, methods=["POST"]),
                Route("/admin/rollouts/{model:path}", self.get_rollout, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app):
        try:
            yield
        finally:
            await self.queues.stop()
            for pool in [*self.pools.values(), *([self.health_client] if self.health_client else [])]:
                await pool.aclose()

    def _pool(self, backend: Backend) -> httpx.AsyncClient:
        """Each backend's own connection pool: one backend holding every connection cannot
        starve the others, and a full pool is the gateway's saturation, not a backend error."""
        pool = self.pools.get(backend.base_url)
        if pool is None:
            limits = httpx.Limits(max_connections=self.limits.connections_per_backend,
                                  max_keepalive_connections=self.limits.connections_per_backend)
            pool = self.pools[backend.base_url] = httpx.AsyncClient(timeout=self.timeout, limits=limits)
        return pool

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

    async def _read_json(self, request: Request, empty: object = None) -> object:
        """The body parsed as JSON, within the policy's limits, or _Refused with the answer;
        `empty` stands for a body with no bytes where that is allowed (the admin API)."""
        limit = self.limits.max_body_bytes
        too_large = _Refused(_error(413, f"The request body is larger than the gateway's limit of {limit} bytes."),
                             "body too large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        if not size and empty is not None:
            return empty
        try:
            body = json.loads(b"".join(chunks))
        except RecursionError:
            raise _Refused(_error(400, "The request's JSON is nested too deeply."), "json too deep") from None
        except ValueError:  # not JSON, or not UTF-8
            raise _Refused(_error(400, "The request body is not JSON."), "not json") from None
        problem = json_shape_problem(body, self.limits.max_json_depth, self.limits.max_json_values)
        if problem:
            raise _Refused(_error(400, problem[0].upper() + problem[1:] + "."), "json too large")
        return body

    async def completions(self, request: Request) -> Response:
        return await self._admitted(request, "completions")

    async def chat_completions(self, request: Request) -> Response:
        return await self._admitted(request, "chat/completions")

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": n, "object": "model", "owned_by": "fledge"}
                                                        for n in self.book.tables]})

    async def health(self, request: Request) -> Response:
        """Ready when some model it serves has a backend taking traffic (each model's state is
        in the answer; `?model=NAME` asks about one): one model without a backend must not take
        every other model out of a load balancer's rotation."""
        name = request.query_params.get("model")
        tables = {k: t for k, t in self.book.tables.items() if name in (None, k)}
        models = {k: bool(t.candidates()) for k, t in tables.items()}
        ready = any(models.values())
        return JSONResponse({"ready": ready, "models": models}, status_code=200 if ready else 503)

    async def prometheus(self, request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def _model_table(self, body: dict) -> tuple[RouteTable | None, JSONResponse | None]:
        """The table of the model the request names (or of the only model, when it names none)."""
        tables, name = self.book.tables, body.get("model")
        if not tables:
            return None, _error(503, "The gateway has no routes yet; add backends through the admin API.", "service_unavailable")
        if name is None:
            if len(tables) == 1:
                return next(iter(tables.values())), None
            return None, _error(400, f"Name the model: this gateway serves {', '.join(tables)}.")
        if not isinstance(name, str) or name not in tables:
            shown = f"'{name}'" if isinstance(name, str) else json.dumps(name)
            return None, _error(404, f"The model {shown} does not exist here; use "
                                + " or ".join(f"'{t}'" for t in tables) + ".", "not_found_error")
        if not tables[name].backends:
            return None, _error(503, f"{name} has no backends yet.", "service_unavailable")
        return tables[name], None

    def _pick(self, request: Request, body: dict) -> tuple[RouteTable | None, Backend | None, JSONResponse | None]:
        routes, refused = self._model_table(body)
        if refused:
            return None, None, refused
        pinned = request.headers.get(VERSION_HEADER)
        if pinned:
            backend = routes.backends.get(pinned)
            if backend is None or backend.draining:
                return None, None, _error(404, f"Version '{pinned}' is not routable here (known for {routes.model}: "
                                          f"{', '.join(routes.backends)}).", "not_found_error")
            return routes, backend, None
        session = request.headers.get(SESSION_HEADER) or body.get("user")
        if session is not None and not isinstance(session, str):
            return None, None, _error(400, "'user' must be a string.")
        try:
            return routes, routes.choose(session, self.rng, ejected=self.outliers.ejected()), None
        except LookupError as error:
            return None, None, _error(503, str(error), "service_unavailable")

    async def _admitted(self, request: Request, path: str) -> Response:
        """The concurrency limit: a slot per client request, held until its last byte."""
        if self.active >= self.limits.max_concurrency:
            self.metrics.rejected.labels("concurrency").inc()
            return _error(503, f"The gateway is serving its limit of {self.limits.max_concurrency} requests at once; "
                          "retry shortly.", "service_unavailable", headers={"retry-after": "1"})
        self.active += 1
        response: Response | None = None
        try:
            response = await self._proxy(request, path)
            return response
        finally:
            if isinstance(response, _RelayResponse):
                response.on_close = self._release  # the stream holds the slot until it ends
            else:
                self._release()

    def _release(self) -> None:
        self.active = max(0, self.active - 1)

    async def _proxy(self, request: Request, path: str) -> Response:
        refused = self._client_error(request)
        if refused:
            return refused
        try:
            body = await self._read_json(request)
        except _Refused as refusal:
            self.metrics.rejected.labels(refusal.reason).inc()
            return refusal.response
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.")
        if not isinstance(body.get("stream", False), bool):
            return _error(400, f"'stream' must be true or false, not {json.dumps(body['stream'])}.")
        routes, backend, refused = self._pick(request, body)
        if refused:
            return refused
        pinned = VERSION_HEADER in request.headers
        if not pinned:  # a client that chose its version is no sample of users' traffic (as in the analysis)
            self._mirror(routes, path, body)
        self.retry_budget.deposit()
        try:
            return await self._forward(routes.model, backend, path, body, retried_from=None, pinned=pinned)
        except _Refused as refusal:
            self.metrics.rejected.labels(refusal.reason).inc()
            return refusal.response
        except _BeforeFirstByte as failure:
            stable = self.book.tables[routes.model].stable() if routes.model in self.book.tables else None
            if pinned or stable is None or stable.version == backend.version:
                return _error(502, f"Backend {backend.version} failed: {failure}", "api_error")
            if not self.retry_budget.withdraw():
                self.metrics.rejected.labels("retry budget").inc()
                return _error(502, f"Backend {backend.version} failed ({failure}) and the gateway's retry budget is spent "
                              f"(retries are at most {self.limits.retry_budget:.0%} of requests).", "api_error")
            self.metrics.retries.labels(routes.model, backend.version, failure.reason).inc()
            try:
                return await self._forward(routes.model, stable, path, body, retried_from=backend.version)
            except _Refused as refusal:
                self.metrics.rejected.labels(refusal.reason).inc()
                return refusal.response
            except _BeforeFirstByte as second:
                return _error(502, f"Backends {backend.version} and {stable.version} failed: {second}", "api_error")

    async def _forward(self, model: str, backend: Backend, path: str, body: dict, retried_from: str | None,
                       pinned: bool = False) -> Response:
        flight = _Flight(self, model, backend, retried_from, pinned)
        payload = {**body, "model": backend.upstream_model}
        if body.get("stream"):
            # Counted tokens, not chunks (see sse.py); the usage event is taken out again for a
            # client that did not ask for it.
            options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
            flight.client_wants_usage = bool(options.get("include_usage"))
            payload["stream_options"] = {**options, "include_usage": True}
        client = self._pool(backend)
        request = client.build_request("POST", f"{backend.base_url}/{path}", json=payload)
        try:
            response = await client.send(request, stream=True)
        except httpx.PoolTimeout:
            flight.abandon()
            raise _Refused(_error(503, f"The gateway's connections to {backend.version} are all in use; retry shortly.",
                                  "service_unavailable", headers={"retry-after": "1"}), "backend pool full") from None
        except httpx.TransportError as error:  # refused, reset, timed out: nothing reached the client
            flight.finish(ok=False, status=599, refused=isinstance(error, httpx.ConnectError))
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

    # ---- mirrored traffic (serving.gateway.mirror) ---------------------------------------------

    def _mirror_backends(self, model: str, config: MirrorConfig) -> tuple[Backend, Backend] | None:
        table = self.book.tables.get(model)
        if table is None or config.candidate not in table.backends or config.baseline not in table.backends:
            return None
        return table.backends[config.candidate], table.backends[config.baseline]

    def _queued(self, model: str) -> Callable[[str], bool]:
        def queued(key: str) -> bool:
            backend = self.book.tables[model].backends.get(key) if model in self.book.tables else None
            return backend is not None and self.queues.queued(backend.base_url)
        return queued

    def _mirrored_urls(self) -> list[str]:
        urls = []
        for model, config in self.mirrors.configs().items():
            backends = self._mirror_backends(model, config)
            urls += [b.base_url for b in backends or ()]
        return urls

    def _health_client(self) -> httpx.AsyncClient:
        if self.health_client is None:
            self.health_client = httpx.AsyncClient(timeout=3.0)
        return self.health_client

    def _mirror(self, routes: RouteTable, path: str, body: dict) -> None:
        """Maybe mirror this request, in a task of its own: the client's answer never waits."""
        dropped_before, queued_before = self.mirrors.dropped, self.mirrors.dropped_queued
        config = self.mirrors.take_slot(routes.model, self.rng.random, self._queued(routes.model))
        if config is None:
            if self.mirrors.dropped_queued > queued_before:
                self.metrics.mirrored.labels(routes.model, "dropped_queued").inc()
            elif self.mirrors.dropped > dropped_before:
                self.metrics.mirrored.labels(routes.model, "dropped").inc()
            return
        backends = self._mirror_backends(routes.model, config)
        if backends is None:
            self.mirrors.free_slot(routes.model, config)
            return
        self.metrics.mirrored.labels(routes.model, "mirrored").inc()

        async def run() -> None:
            try:
                pair = await mirror_pair(self._pool, routes.model, *backends, path, body, config)
                self.mirrors.record(pair)
            finally:
                self.mirrors.free_slot(routes.model, config)

        task = asyncio.get_running_loop().create_task(run())
        self.mirrors.tasks.add(task)
        task.add_done_callback(self.mirrors.tasks.discard)

    async def get_mirror(self, request: Request) -> Response:
        async def change(body, model):
            config = self.mirrors.config(model) if model else None
            return JSONResponse({"mirror": config.model_dump() if config else None, "mirrored": self.mirrors.mirrored,
                                 "dropped": self.mirrors.dropped, "dropped_queued": self.mirrors.dropped_queued,
                                 "pairs_seq": self.mirrors.last_seq})
        return await self._admin(request, change)

    async def put_mirror(self, request: Request) -> Response:
        async def change(body, model):
            config = MirrorConfig.model_validate({k: v for k, v in body.items() if k != "model"})
            table = self._table(model)
            missing = [key for key in (config.candidate, config.baseline) if key not in table.backends]
            if missing:
                raise RouteChangeRefused(f"cannot mirror to {', '.join(missing)}: not a backend of {model} "
                                         f"(backends: {', '.join(table.backends)}); add it first")
            self.mirrors.configure(model, config)
            self.queues.watch(self._health_client, self._mirrored_urls)
            return JSONResponse({"mirror": config.model_dump(), "pairs_seq": self.mirrors.last_seq})
        return await self._admin(request, change)

    async def delete_mirror(self, request: Request) -> Response:
        async def change(body, model):
            self.mirrors.configure(self._table(model).model, None)
            return JSONResponse({"mirror": None, "pairs_seq": self.mirrors.last_seq})
        return await self._admin(request, change)

    async def get_pairs(self, request: Request) -> Response:
        async def change(body, model):
            after = int(request.query_params.get("after", "0"))
            return JSONResponse([p.to_json() for p in self.mirrors.pairs(model, after)])
        return await self._admin(request, change)

    async def probe(self, request: Request) -> Response:
        """A probe: `request` (a completions or chat body) sent to the model's mirror pair only,
        waited for, recorded as a pair carrying `probe`, and returned. Never seen by users' figures."""
        async def change(body, model):
            config = self.mirrors.config(model) if model else None
            if config is None:
                raise RouteChangeRefused(f"{model} has no mirror: probes go to a rollout's candidate and baseline")
            path = body.get("path", "completions")
            if path not in ("completions", "chat/completions") or not isinstance(body.get("request"), dict):
                raise RouteChangeRefused("a probe needs 'request' (a completions or chat body) and 'path' "
                                         "(completions or chat/completions)")
            taken = self.mirrors.take_slot(model, None, self._queued(model))
            backends = self._mirror_backends(model, config) if taken else None
            if backends is None:
                if taken:
                    self.mirrors.free_slot(model, taken)
                return _error(503, "The mirror's backends are busy (mirrored requests, or users' requests queued); send the probe again "
                              "shortly.", "service_unavailable", headers={"retry-after": "1"})
            try:
                pair = await mirror_pair(self._pool, model, *backends, path, body["request"], taken,
                                         probe=body.get("probe") or {})
            finally:
                self.mirrors.free_slot(model, taken)
            return JSONResponse(self.mirrors.record(pair).to_json())
        return await self._admin(request, change)

    # ---- admin API ---------------------------------------------------------------------------

    def _admin_error(self, request: Request) -> JSONResponse | None:
        if self._token_used(request) is None:
            return _error(401, "Admin API: pass the gateway's admin token as 'Authorization: Bearer TOKEN'.", "authentication_error")
        return None

    def _token_used(self, request: Request) -> str | None:
        """The admin or the controller token the request carries (compared in constant time)."""
        given = request.headers.get("authorization", "").encode()
        for token in (self.admin_token, self.controller_token):
            if token and hmac.compare_digest(given, f"Bearer {token}".encode()):
                return token
        return None

    async def _unhealthy_gainers(self, table: RouteTable) -> dict[str, str]:
        """The backends `table` gives more share than they have now that fail their health
        check (GET /health), with why."""
        current = self.book.tables[table.model].backends if table.model in self.book.tables else {}
        gainers = [b for k, b in table.backends.items()
                   if not b.draining and b.weight > (current[k].weight if k in current else 0)]

        async def check(backend: Backend) -> str | None:
            try:
                response = await self._health_client().get(f"{backend.base_url.removesuffix('/v1')}/health")
            except httpx.HTTPError as error:
                return f"{type(error).__name__}: {error}"
            return None if response.status_code == 200 else f"/health answered HTTP {response.status_code}"

        problems = await asyncio.gather(*(check(b) for b in gainers))
        return {b.version: problem for b, problem in zip(gainers, problems) if problem}

    async def _commit(self, table: RouteTable) -> JSONResponse:
        """Apply and persist a model's new table; refused (RouteChangeRefused) when it would give
        a share to a backend that does not pass its health check."""
        unhealthy = await self._unhealthy_gainers(table)
        if unhealthy:
            raise RouteChangeRefused("a share is never given to a backend that fails its health check: " + "; ".join(
                f"{key} at {table.backends[key].base_url} ({why})" for key, why in unhealthy.items()))
        book = self.book.with_table(table)
        save_routes(book, self.routes_path)  # persist first: a crash never loses an acknowledged change
        self.book = book
        self._publish_weights()
        return self._routes_json(table.model)

    def _publish_weights(self) -> None:
        self.metrics.set_weights({(model, key): backend.weight for model, table in self.book.tables.items()
                                  for key, backend in table.backends.items()})

    def _routes_json(self, model: str | None) -> JSONResponse:
        table = self.book.tables.get(model) if model else None
        ejected = self.outliers.ejected()
        return JSONResponse({
            "routes": table.model_dump() if table else None,
            "tables": {k: t.model_dump() for k, t in self.book.tables.items()},
            "in_flight": dict(self.in_flight), "sequence": self.metrics.last_seq, "ejected": ejected,
            "effective_weights": table.effective_weights(ejected) if table else {},
        })

    def _addressed(self, request: Request, body: object) -> str | None:
        """The model an admin request is about: the path's or `?model=`, the body's "model",
        the table holding the path's route key, else the gateway's only model."""
        model = request.path_params.get("model") or request.query_params.get("model")
        if model is None and isinstance(body, dict) and isinstance(body.get("model"), str):
            model = body["model"]
        if model is None and "version" in request.path_params:
            holder = self.book.holding(request.path_params["version"])
            model = holder.model if holder else None
        if model is None and len(self.book.tables) == 1:
            model = next(iter(self.book.tables))
        return model

    def _table(self, model: str | None, version: str | None = None) -> RouteTable:
        if model is None:
            if not self.book.tables:
                raise RouteChangeRefused("the gateway has no routes yet; add a backend first")
            if version is not None:
                raise RouteChangeRefused(f"{version} is not a backend of any model this gateway serves "
                                         f"({', '.join(self.book.tables)})")
            raise RouteChangeRefused(f"this gateway serves several models ({', '.join(self.book.tables)}): "
                                     "name one with ?model=NAME")
        if model not in self.book.tables:
            raise RouteChangeRefused(f"the gateway has no routes for {model} (it serves: "
                                     f"{', '.join(self.book.tables) or 'none'}); add a backend for it first")
        return self.book.tables[model]

    def _fence_error(self, request: Request, model: str | None) -> JSONResponse | None:
        """A change of a model while someone holds its lease must carry that lease's fencing
        token; a stale token (a lease that expired, was broken or preempted) is refused too, so
        its holder never undoes what the new holder did."""
        fence = request.headers.get(FENCE_HEADER)
        if fence:
            fenced_model, _, token = fence.rpartition(":")
            if model is not None and fenced_model and fenced_model != model:
                # A lease is for one model: it never lets its holder past another model's lease.
                return _error(409, f"Refused: the change is for {model}, under a lease on {fenced_model}; take "
                              f"{model}'s own lease.", "lease_lost")
            try:
                self.leases.check(fenced_model or model, int(token))
            except (LeaseLost, ValueError) as error:
                return _error(409, f"Refused: {error}.", "lease_lost")
            return None
        held = self.leases.current(model) if model else None
        if held is not None:
            return _error(409, f"Refused: {held.holder} holds the lease on {model} ({held.purpose}, lease {held.token}); "
                          "changes go through it, or break the lease (`fledge lease break`).", "lease_held")
        return None

    async def _admin(self, request: Request, change) -> Response:
        """Authenticate, read the body, fence, apply `change(body, model)` and audit it."""
        refused = self._admin_error(request)
        if refused:
            return refused
        try:
            body = await self._read_json(request, empty={}) if request.method in ("PUT", "POST") else {}
        except _Refused as refusal:
            return refusal.response
        model = self._addressed(request, body)
        named = body.get("model") if isinstance(body, dict) else None
        if isinstance(named, str) and model is not None and named != model:
            return _error(400, f"The request addresses {model} (?model=) but its body is about {named}; address the "
                          "model the change is for.")
        # Leases are taken outside of leases; an operator's pause, resume or abort of a rollout
        # must work whoever holds the model (Argo's abort always means "back to stable"); the
        # controller acts on the rollouts it owns.
        exempt = (request.url.path.startswith("/admin/leases") or self._token_used(request) == self.controller_token
                  or (request.url.path.startswith("/admin/rollouts/") and "command" in request.path_params))
        if request.method != "GET" and not exempt:
            refused = self._fence_error(request, model)
            if refused:
                return refused
        table = self.book.tables.get(model) if model else None
        before = table.model_dump() if table else None
        try:
            response = await change(body, model)
        except _Refused as refusal:
            return refusal.response
        except LeaseHeld as error:
            return JSONResponse({"error": {"message": str(error), "type": "lease_held", "code": 409},
                                 "lease": error.lease.model_dump()}, status_code=409)
        except LeaseLost as error:
            return _error(409, str(error), "lease_lost")
        except RolloutConflict as error:
            return _error(409, str(error), "rollout_conflict")
        except (RouteChangeRefused, ValueError, KeyError, TypeError) as error:  # ValueError: pydantic's validation
            return _error(400, str(error))
        # Renewals and probes change nothing anyone needs to audit, and come every few seconds.
        unaudited = ("/admin/leases/renew", "/admin/probe")
        if request.method != "GET" and request.url.path not in unaudited and response.status_code < 400:
            table = self.book.tables.get(model) if model else None
            after = table.model_dump() if table else None
            leases = {"lease": body} if request.url.path.startswith("/admin/leases") else {}
            self.audit.append(f"{request.method} {request.url.path}", before, after, self._token_used(request),
                              query=dict(request.query_params), fence=request.headers.get(FENCE_HEADER), model=model,
                              **leases)
        return response

    async def get_routes(self, request: Request) -> Response:
        return await self._admin(request, lambda body, model: _async(self._routes_json(model)))

    async def put_routes(self, request: Request) -> Response:
        return await self._admin(request, lambda body, model: self._commit(RouteTable.model_validate(body)))

    async def set_weights(self, request: Request) -> Response:
        return await self._admin(request, lambda body, model: self._commit(self._table(model).with_weights(body["weights"])))

    async def add_backend(self, request: Request) -> Response:
        async def change(body, model):
            backend = Backend.model_validate(body["backend"])
            self.outliers.forget(backend.version)  # a new server behind the key starts with a clean record
            if body["model"] not in self.book.tables:
                return await self._commit(RouteTable.serving_only(body["model"], backend))
            return await self._commit(self.book.tables[body["model"]].with_backend(backend))
        return await self._admin(request, change)

    async def drain(self, request: Request) -> Response:
        version = request.path_params["version"]

        async def change(body, model):
            deadline_s = float(request.query_params.get("deadline_s", "30"))
            await self._commit(self._table(model, version).draining(version))
            end = time.monotonic() + deadline_s
            while self.in_flight.get(version, 0) and time.monotonic() < end:
                await asyncio.sleep(0.05)
            return JSONResponse({"drained": self.in_flight.get(version, 0) == 0, "in_flight": self.in_flight.get(version, 0),
                                 "routes": self.book.tables[model].model_dump()})
        return await self._admin(request, change)

    async def remove_backend(self, request: Request) -> Response:
        version = request.path_params["version"]

        return await self._admin(request, lambda body, model: self._commit(self._table(model, version).without(version)))

    async def observations(self, request: Request) -> Response:
        async def change(body, model):
            if "last_seconds" in request.query_params:
                observations = self.metrics.recent(float(request.query_params["last_seconds"]))
            else:
                observations = self.metrics.observations(int(request.query_params.get("after", "0")))
            return JSONResponse([o.__dict__ for o in observations])
        return await self._admin(request, change)

    async def get_audit(self, request: Request) -> Response:
        def entries():
            found = self.audit.entries(int(request.query_params.get("after", "0")))
            only = request.query_params.get("model")  # a model's changes (entries from before models were named stay)
            found = [e for e in found if only is None or e.get("model", only) == only]
            last = int(request.query_params.get("last", "0"))
            return JSONResponse(found[-last:] if last else found)
        return await self._admin(request, lambda body, model: _async(entries()))

    async def get_leases(self, request: Request) -> Response:
        return await self._admin(request, lambda body, model: _async(JSONResponse(
            {model: lease.model_dump() for model in list(self.leases.leases) if (lease := self.leases.current(model))})))

    async def acquire_lease(self, request: Request) -> Response:
        async def change(body, model):
            pid = body.get("pid")
            lease = self.leases.acquire(body["model"], str(body["holder"]), str(body["purpose"]), float(body["ttl_s"]),
                                        preempt=bool(body.get("preempt", False)), host=body.get("host"),
                                        pid=int(pid) if pid is not None else None)
            return JSONResponse(lease.model_dump())
        return await self._admin(request, change)

    async def renew_lease(self, request: Request) -> Response:
        return await self._admin(request, lambda body, model: _async(JSONResponse(
            self.leases.renew(body["model"], int(body["token"]), float(body["ttl_s"])).model_dump())))

    async def release_lease(self, request: Request) -> Response:
        async def change(body, model):
            self.leases.release(body["model"], int(body["token"]))
            return JSONResponse({"released": True})
        return await self._admin(request, change)

    async def break_lease(self, request: Request) -> Response:
        async def change(body, model):
            broken = self.leases.break_lease(body["model"], str(body["by"]))
            return JSONResponse({"broken": broken.model_dump() if broken else None})
        return await self._admin(request, change)

    async def backend_metrics(self, request: Request) -> Response:
        version = request.path_params["version"]

        async def change(body, model):
            holder = self.book.holding(version)
            if holder is None:
                raise KeyError(f"{version} is not a backend of this gateway")
            backend = holder.backends[version]
            response = await self._pool(backend).get(f"{backend.base_url.removesuffix('/v1')}/metrics")
            return PlainTextResponse(response.text, status_code=response.status_code, media_type=CONTENT_TYPE_LATEST)
        return await self._admin(request, change)

    # ---- rollouts: owned by the plane's controller --------------------------------------------

    def _controller(self) -> RolloutService:
        if self.rollouts is None:
            raise _Refused(_error(404, "This gateway runs no rollout controller: start the serving plane with "
                                  "`fledge gateway NAME`.", "not_found"), "no controller")
        return self.rollouts

    async def list_rollouts(self, request: Request) -> Response:
        return await self._admin(request, lambda body, model: _async(JSONResponse(self._controller().list())))

    async def get_rollout(self, request: Request) -> Response:
        async def change(body, model):
            try:
                return JSONResponse(await asyncio.to_thread(self._controller().get, model))
            except KeyError:
                return _error(404, f"No rollout of {model} is on record.", "not_found")
        return await self._admin(request, change)

    async def submit_rollout(self, request: Request) -> Response:
        async def change(body, model):
            return JSONResponse(await asyncio.to_thread(self._controller().submit, body), status_code=201)
        return await self._admin(request, change)

    async def command_rollout(self, request: Request) -> Response:
        command = request.path_params["command"]

        async def change(body, model):
            if command not in ROLLOUT_COMMANDS:
                return _error(404, f"Unknown rollout command {command!r}: use one of {', '.join(ROLLOUT_COMMANDS)}.",
                              "not_found")
            try:
                comment = body.get("comment")
                return JSONResponse(await asyncio.to_thread(self._controller().command, model, command,
                                                            str(body.get("by") or "an operator"),
                                                            str(comment) if comment else None))
            except KeyError:
                return _error(404, f"No rollout of {model} is on record.", "not_found")
        return await self._admin(request, change)


async def _async(value):
    return value
