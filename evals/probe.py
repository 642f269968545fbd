"""One request of each kind the suites send, before they run: a server that cannot answer them
(weights that produce NaN, a model the engine cannot run) becomes one clear error with the
server's own reason, instead of lm-eval retrying every request and printing a traceback each."""

from __future__ import annotations

import httpx

from evals.endpoint import Endpoint
from fledge.core.openai_errors import error_message

PROBE_PROMPT = "Q: What is 2 plus 3?\nA:"


class EndpointBroken(RuntimeError):
    """The served model does not answer the requests the evaluations make; says what it said."""


def probe(endpoint: Endpoint, timeout_s: float = 120.0) -> None:
    """Raise EndpointBroken unless a scored (echo + logprobs) and a generated completion succeed."""
    requests = {
        "scoring (echo with logprobs, as lm-eval asks)": {"prompt": PROBE_PROMPT, "max_tokens": 1, "echo": True,
                                                          "logprobs": 1, "temperature": 0},
        "generation": {"prompt": PROBE_PROMPT, "max_tokens": 4, "temperature": 0},
    }
    headers = {"Authorization": f"Bearer {endpoint.api_key}"}
    with httpx.Client(timeout=timeout_s) as client:
        for kind, body in requests.items():
            try:
                response = client.post(endpoint.completions_url, json={"model": endpoint.model, **body}, headers=headers)
            except httpx.HTTPError as error:
                raise EndpointBroken(f"{endpoint.model} at {endpoint.base_url} did not answer a {kind} request "
                                     f"({type(error).__name__}: {error})") from None
            if response.status_code >= 400:
                raise EndpointBroken(
                    f"{endpoint.model} answered a {kind} request with HTTP {response.status_code}: "
                    f"{error_message(response.text) or response.reason_phrase}; its vLLM log has the details"
                )
