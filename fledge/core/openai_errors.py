"""The reason an OpenAI-compatible server (vLLM) gives in an error response, for one-paragraph
errors: `{"error": {"message": ...}}` (current vLLM and OpenAI) or `{"message": ...}` (older vLLM)."""

from __future__ import annotations

import json


def error_message(body: str, limit: int = 500) -> str:
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.strip()[:limit]
    error = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    message = error.get("message") if isinstance(error, dict) else None
    return str(message or parsed)[:limit]
