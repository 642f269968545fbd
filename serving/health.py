"""Wait for an OpenAI-compatible server to be healthy and serving the expected model."""

from __future__ import annotations

import time
from typing import Callable

import httpx


def wait_until_ready(
    base_url: str,
    served_model_name: str,
    deadline_s: float,
    still_running: Callable[[], bool],
    poll_s: float = 0.5,
) -> None:
    """Return when `/health` answers 200 and `/v1/models` lists the model.

    Raises TimeoutError at the deadline and ChildProcessError as soon as the server is gone,
    so a crashed start is reported at once instead of after the deadline.
    """
    root = base_url.removesuffix("/v1")
    end = time.monotonic() + deadline_s
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < end:
            if not still_running():
                raise ChildProcessError("the server exited during start-up")
            try:
                if client.get(f"{root}/health").status_code == 200:
                    models = client.get(f"{root}/v1/models").json()
                    if any(m.get("id") == served_model_name for m in models.get("data", [])):
                        return
            except httpx.HTTPError:
                pass
            time.sleep(poll_s)
    raise TimeoutError(f"not ready after {deadline_s:.0f} s")
