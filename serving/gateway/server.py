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

from serving.gateway.app import Gateway

TOKEN_FILE = "gateway-admin-token"
ROUTES_FILE = "gateway-routes.json"


def admin_token(state_dir: Path) -> str:
    """FLEDGE_GATEWAY_ADMIN_TOKEN, or a token generated once and kept (mode 0600) in state."""
    if os.environ.get("FLEDGE_GATEWAY_ADMIN_TOKEN"):
        return os.environ["FLEDGE_GATEWAY_ADMIN_TOKEN"]
    path = state_dir / TOKEN_FILE
    if not path.is_file():
        state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def build_gateway(state_dir: Path, api_keys: dict[str, float] | None = None, **kwargs) -> Gateway:
    return Gateway(state_dir / ROUTES_FILE, admin_token(state_dir), api_keys=api_keys, **kwargs)


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
