"""Model references as users write them: `NAME/VERSION` or `NAME@ALIAS`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from registry.errors import InvalidReference

# Fledge's release roles. Other aliases are allowed, these are the ones the flows move.
CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"

_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"{self.name}/{self.version}" if self.version else f"{self.name}@{self.alias}"


def check_alias(alias: str) -> str:
    # MLflow reserves `latest` and `v<number>`; refuse them here with the reason.
    if not _ALIAS.match(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        raise InvalidReference(
            f"'{alias}' cannot be an alias: use letters, digits, '_' or '-', starting with a letter, "
            "and not 'latest' or 'v<number>' (MLflow reserves them), e.g. 'champion'."
        )
    return alias


def parse_ref(text: str) -> ModelRef:
    if "@" in text:
        name, alias = text.rsplit("@", 1)
        if name and alias:
            return ModelRef(name=name, alias=check_alias(alias))
    elif "/" in text:
        name, version = text.rsplit("/", 1)
        if name and version.isdigit():
            return ModelRef(name=name, version=version)
    raise InvalidReference(
        f"'{text}' is not a model reference. Write NAME/VERSION (e.g. tiny-llama/3) or NAME@ALIAS "
        "(e.g. tiny-llama@champion)."
    )
