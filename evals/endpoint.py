"""Where a served model is reached: what every suite evaluates (the model *as served*)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # OpenAI base URL, ending in /v1
    model: str  # served model name, NAME/VERSION
    api_key: str = "unused"

    @property
    def completions_url(self) -> str:
        return f"{self.base_url.rstrip('/')}/completions"
