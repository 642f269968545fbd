"""Line-level handling of OpenAI server-sent events, without buffering a response.

Bytes are split into lines as they arrive; each complete line is passed on at once (vLLM
ends every event with a newline, so nothing waits), after rewriting the backend's model name
to the public one and noting whether it carried a token.
"""

from __future__ import annotations

import json


class EventStream:
    def __init__(self, backend_name: str, public_name: str):
        self._pending = b""
        self._backend = json.dumps(backend_name).encode()
        self._public = json.dumps(public_name).encode()
        self.token_chunks = 0
        self.usage_tokens: int | None = None
        self.saw_error = False

    def feed(self, data: bytes) -> bytes:
        """The complete lines in `data` (plus what was pending), rewritten; keeps the rest."""
        self._pending += data
        complete, _, self._pending = self._pending.rpartition(b"\n")
        if not complete and not _:
            return b""
        return b"\n".join(self._line(line) for line in complete.split(b"\n")) + b"\n"

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._line(rest) if rest else b""

    def _line(self, line: bytes) -> bytes:
        if not line.startswith(b"data: {"):
            return line
        line = line.replace(b'"model":' + self._backend, b'"model":' + self._public).replace(
            b'"model": ' + self._backend, b'"model": ' + self._public
        )
        try:
            event = json.loads(line[6:])
        except ValueError:
            return line
        if event.get("choices"):
            self.token_chunks += 1
        if event.get("usage"):
            self.usage_tokens = event["usage"].get("completion_tokens")
        if "error" in event:
            self.saw_error = True
        return line
