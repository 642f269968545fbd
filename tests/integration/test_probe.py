"""A server that cannot answer the evaluations' requests: one probe, one clear error with the
server's own reason, and no suite (lm-eval and its retries) run against it. Real HTTP on loopback."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from evals.endpoint import Endpoint
from fledge.core.policy import load_policy
from fledge.services.evaluate import measure

ROOT_CAUSE = "The model's output contains NaN: check the weights"


@pytest.fixture()
def broken_server():
    requests = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            body = json.dumps({"error": {"message": ROOT_CAUSE, "type": "BadRequestError", "code": 400}}).encode()
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", requests
    server.shutdown()


def test_a_broken_candidate_is_an_error_with_the_servers_reason_after_one_request(broken_server):
    url, requests = broken_server
    policy = load_policy()
    lines = []
    champion, candidate, _ = measure(
        policy, ("quality", "safety"), Endpoint(url, "m/1"), Endpoint(url, "m/2"), log=lines.append,
        champion_results={"quality": None, "safety": None},
    )
    assert set(candidate.errors) == {"quality", "safety"}
    for message in candidate.errors.values():
        assert "m/2 answered a scoring (echo with logprobs, as lm-eval asks) request with HTTP 400" in message
        assert ROOT_CAUSE in message
    assert len(requests) == 1 and requests[0]["echo"] is True  # no suite, no retries
    assert lines == [candidate.errors["quality"]]
