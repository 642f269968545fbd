"""Run the gateway: in the foreground (`fledge gateway`) or on a background thread (tests,
flows, benchmarks) with real HTTP on loopback."""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from pathlib import Path

import uvicorn

from fledge.core.policy import GatewayPolicy
from fledge.core.state import StatePaths, create_once
from serving.gateway.app import Gateway


def admin_token(state_dir: Path) -> str:
    """FLEDGE_GATEWAY_ADMIN_TOKEN, or a token generated once and kept in state, created 0600."""
    if os.environ.get("FLEDGE_GATEWAY_ADMIN_TOKEN"):
        return os.environ["FLEDGE_GATEWAY_ADMIN_TOKEN"]
    path = StatePaths.under(state_dir).admin_token
    token = path.read_text() if path.is_file() else create_once(path, secrets.token_urlsafe(24))
    return token.strip()


def build_gateway(state_dir: Path, limits: GatewayPolicy, api_keys: dict[str, float] | None = None, **kwargs) -> Gateway:
    """The gateway of a state directory: its routes, audit log and admin token live there;
    `limits` is the policy's `serving.gateway` section."""
    paths = StatePaths.under(state_dir)
    return Gateway(paths.routes, admin_token(state_dir), limits, audit_path=paths.audit, leases_path=paths.leases,
                   api_keys=api_keys, **kwargs)


class BackgroundGateway:
    """uvicorn serving a Gateway on a thread; `stop()` shuts it down cleanly."""

    def __init__(self, gateway: Gateway, host: str = "127.0.0.1", port: int | None = None):
        self.gateway = gateway
        if port is None:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        self.host, self.port = host, port
        config = uvicorn.Config(gateway.app, host=host, port=port, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="fledge-gateway", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> "BackgroundGateway":
        self.thread.start()
        end = time.monotonic() + timeout_s
        while not self.server.started:
            if time.monotonic() > end or not self.thread.is_alive():
                raise RuntimeError(f"the gateway did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
