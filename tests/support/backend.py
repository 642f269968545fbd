"""A scripted OpenAI-compatible completions server on loopback: the stand-in for vLLM where a
test needs a backend that fails, stalls or answers exactly as told (real HTTP, real sockets;
vLLM itself cannot be made to fail 10 % of its requests on demand)."""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Script:
    error_rate: float = 0.0  # share of requests answered 500
    delay_s: float = 0.0  # before the answer starts
    tokens: int = 4
    token_gap_s: float = 0.002  # between streamed chunks
    seed: int = 0
    # The answer's text for a request body (default: " t0 t1 ..."), e.g. to refuse some prompts.
    answer: Callable[[dict], str] | None = None
    # Set: every answer waits until it is set (a server that is busy for as long as a test wants).
    hold: threading.Event | None = None
    received: list = field(default_factory=list)  # every request body, in order
    # Set: /metrics publishes vLLM's queue gauge with this many requests waiting.
    waiting: int | None = None
    served: int = 0
    failed: int = 0
    rng: random.Random = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.rng = random.Random(self.seed)

    def fails_next(self) -> bool:
        with self.lock:
            self.served += 1
            failing = self.rng.random() < self.error_rate
            self.failed += failing
            return failing


class ScriptedBackend:
    def __init__(self, name: str, script: Script | None = None):
        self.name, self.script = name, script or Script()
        self.connections: set[socket.socket] = set()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                # Headers and body go out in two writes: without this, Nagle's algorithm and the
                # client's delayed ACK add 40 ms to every answer.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                backend.connections.add(self.request)

            def do_GET(self):
                if self.path == "/health":
                    self._send(200, b"", "text/plain")
                elif self.path == "/metrics" and backend.script.waiting is not None:
                    self._send(200, ("# TYPE vllm:num_requests_waiting gauge\n"
                                     f'vllm:num_requests_waiting{{engine="0",model_name="m"}} {backend.script.waiting}\n'
                                     ).encode(), "text/plain")
                else:
                    self._send(404, b'{"error": {"message": "not found"}}', "application/json")

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
                backend.script.received.append(body)
                if backend.script.hold is not None:
                    backend.script.hold.wait(timeout=30)
                if backend.script.delay_s:
                    time.sleep(backend.script.delay_s)
                if backend.script.fails_next():
                    self._send(500, b'{"error": {"message": "scripted failure"}}', "application/json")
                    return
                text = [f" t{i}" for i in range(backend.script.tokens)]
                if backend.script.answer is not None:
                    words = backend.script.answer(body).split(" ")
                    text = [words[0]] + [" " + w for w in words[1:]]
                if body.get("stream"):
                    events = [{"model": body["model"], "choices": [{"index": 0, "text": t}]} for t in text]
                    events.append({"model": body["model"], "choices": [],
                                   "usage": {"completion_tokens": len(text)}})
                    chunks = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
                    self._send(200, chunks, "text/event-stream")
                    return
                answer = {"model": body.get("model"), "choices": [{"index": 0, "text": "".join(text)}],
                          "usage": {"completion_tokens": len(text)}}
                self._send(200, json.dumps(answer).encode(), "application/json")

            def _send(self, status: int, payload: bytes | list[bytes], kind: str) -> None:
                """A list is streamed chunk by chunk, a token's gap apart, as a server decodes."""
                chunks = payload if isinstance(payload, list) else [payload]
                self.send_response(status)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(sum(len(c) for c in chunks)))
                self.end_headers()
                for index, chunk in enumerate(chunks):
                    if index:
                        time.sleep(backend.script.token_gap_s)
                    self.wfile.write(chunk)
                    self.wfile.flush()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "ScriptedBackend":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Die as a killed server does: open connections are cut and new ones refused."""
        self.server.shutdown()
        self.server.server_close()
        for connection in list(self.connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
