"""The release roles as registry aliases, and the two moves every champion change makes: the
promotion (champion -> new, previous -> old, challenger released) and putting the roles back as
a snapshot had them. Idempotent, so a re-run after a crash (or a restarted rollout controller)
can make them again."""

from __future__ import annotations

from fledge.core.tags import Status
from registry.refs import CHALLENGER, CHAMPION, PREVIOUS
from registry.store import ModelRegistry

ROLES = (CHAMPION, CHALLENGER, PREVIOUS)


def restore_aliases(registry: ModelRegistry, model: str, aliases: dict[str, str]) -> list[str]:
    """Put the release roles back as they were; returns what changed, in words."""
    current = registry.aliases(model)
    changes = []
    for role in ROLES:
        before, now = aliases.get(role), current.get(role)
        if before == now:
            continue
        if before is None:
            registry.delete_alias(model, role)
            changes.append(f"{role} removed (was {now})")
        else:
            registry.set_alias(model, role, before)
            changes.append(f"{role} -> {before} (was {now or 'unset'})")
    return changes


def promote_aliases(registry: ModelRegistry, model: str, new_version: str, old_version: str | None) -> None:
    """`champion` -> the new version, `previous` -> the old champion, `challenger` released."""
    if old_version and old_version != new_version:
        registry.set_alias(model, PREVIOUS, old_version)
        registry.set_status(model, old_version, Status.PREVIOUS)
    registry.set_alias(model, CHAMPION, new_version)
    registry.set_status(model, new_version, Status.CHAMPION)
    if registry.aliases(model).get(CHALLENGER) == new_version:
        registry.delete_alias(model, CHALLENGER)
