"""Line-level handling of OpenAI server-sent events, without buffering a response.

Bytes are split into lines as they arrive; each complete line is passed on at once (vLLM
ends every event with a newline, so nothing waits), after rewriting the backend's model name
to the public one and noting whether it carried a token.

The gateway asks every stream for its usage (the token count), because chunks are not tokens:
vLLM merges the tokens a slow reader has not taken yet into one chunk (2-3 chunks for 8 tokens
under the demo's load). For a client that did not ask for usage, the usage-only event is
taken out (`strip_usage`), so it gets the stream it asked for.
"""

from __future__ import annotations

import json


class EventStream:
    def __init__(self, backend_name: str, public_name: str, strip_usage: bool = False):
        self._pending = b""
        self._strip_usage = strip_usage
        self._dropped_event = False  # the blank line that ends a dropped event goes too
        self._backend = json.dumps(backend_name).encode()
        self._public = json.dumps(public_name).encode()
        self.token_chunks = 0
        self.usage_tokens: int | None = None
        self.saw_error = False
        self.done = False  # the stream's `data: [DONE]` passed: the backend has answered in full

    def feed(self, data: bytes) -> bytes:
        """The complete lines in `data` (plus what was pending), rewritten; keeps the rest."""
        self._pending += data
        complete, _, self._pending = self._pending.rpartition(b"\n")
        if not complete and not _:
            return b""
        kept = [out for out in map(self._line, complete.split(b"\n")) if out is not None]
        return b"".join(line + b"\n" for line in kept)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return (self._line(rest) or b"") if rest else b""

    def _line(self, line: bytes) -> bytes | None:
        """The line rewritten, or None when it is dropped."""
        if self._dropped_event and not line.strip():
            self._dropped_event = False
            return None
        if not line.startswith(b"data: {"):
            if line.strip() == b"data: [DONE]":
                self.done = True
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
            if self._strip_usage and not event.get("choices"):
                self._dropped_event = True
                return None
        if "error" in event:
            self.saw_error = True
        return line
