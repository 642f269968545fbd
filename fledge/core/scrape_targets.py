"""What Prometheus scrapes of a home's serving plane: the gateway and each vLLM instance, as a
Prometheus file_sd file under FLEDGE_HOME/stack/prometheus/targets.

The team stack's Prometheus (fledge.stack) reads that directory every few seconds, so the
serving fleet only has to rewrite one file when it records or removes an instance. The writer
lives here, in the core, because both the fleet (serving/, which may import only the core)
and the stack (above the services) write the same file. Without a stack the directory does
not exist and `refresh_from_state` does nothing, so a home without the stack is unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

from fledge.core.state import StatePaths, read_json, write_if_changed

TARGETS_FILE = "fledge.json"  # one file for the whole plane: rewritten whole, never appended
GATEWAY_JOB, VLLM_JOB = "fledge-gateway", "vllm"


def targets_dir(home_root: Path) -> Path:
    """Where the stack's Prometheus looks for file_sd files of this home."""
    return Path(home_root) / "stack" / "prometheus" / "targets"


def _target(base_url: str, labels: dict[str, str]) -> dict:
    """One file_sd entry scraping `base_url`'s /metrics. An OpenAI base URL (…/v1) is served by
    a vLLM whose metrics are at the root, so the /v1 is dropped."""
    parts = urlsplit(base_url)
    if not parts.hostname or not parts.port:
        raise ValueError(f"cannot scrape {base_url!r}: a target needs a host and an explicit port")
    path = parts.path.rstrip("/").removesuffix("/v1")
    labels = dict(labels)
    if path:
        labels["__metrics_path__"] = f"{path}/metrics"
    if parts.scheme == "https":
        labels["__scheme__"] = "https"
    return {"targets": [f"{parts.hostname}:{parts.port}"], "labels": labels}


def scrape_targets(gateway_url: str | None, instances: Iterable[tuple[str, str]]) -> list[dict]:
    """The file_sd content: the gateway (job fledge-gateway) and each instance (job vllm,
    labelled instance_key=KEY), in a stable order so an unchanged fleet writes the same bytes."""
    entries = [_target(gateway_url, {"job": GATEWAY_JOB})] if gateway_url else []
    entries += [_target(url, {"job": VLLM_JOB, "instance_key": key}) for key, url in sorted(instances)]
    return entries


def write_scrape_targets(targets_dir: Path, gateway_url: str | None, instances: Iterable[tuple[str, str]]) -> Path:
    """Write the plane's file_sd file atomically (Prometheus never reads half a file). Skipped
    when the content is unchanged: the fleet rewrites its records at every lease renewal."""
    path = Path(targets_dir) / TARGETS_FILE
    content = json.dumps(scrape_targets(gateway_url, instances), indent=2) + "\n"
    write_if_changed(path, content)
    return path


def refresh_from_state(state_dir: Path) -> Path | None:
    """Rewrite the targets from what the home records (state/instances.json, the running
    plane's state/gateway.json); nothing when the home has no stack targets directory.
    Adapters are skipped: they are served by their host's process, which is scraped already."""
    directory = targets_dir(Path(state_dir).parent)
    if not directory.is_dir():
        return None
    files = StatePaths.under(Path(state_dir))
    try:
        records = read_json(files.instances) or {}
        plane = read_json(files.plane) or {}
    except (OSError, ValueError):  # a file being replaced or unreadable: the next write refreshes
        return None
    instances = [(key, r["base_url"]) for key, r in records.items() if not r.get("adapter_of") and r.get("base_url")]
    return write_scrape_targets(directory, plane.get("url"), instances)
