"""The serving fleet as Prometheus targets: the gateway of the running plane and every vLLM
instance the fleet records (serving.fleet.Fleet.records, the same view as
fledge.services.plane.fleet_for). Adapters are served by their host's process and are not
scraped twice. `up` publishes once; afterwards the fleet republishes on every change."""

from __future__ import annotations

from pathlib import Path

from fledge.core.home import FledgeHome
from fledge.core.scrape_targets import write_scrape_targets
from fledge.core.state import read_json
from fledge.services.plane_record import read_plane_record


def fleet_instances(home: FledgeHome) -> list[tuple[str, str]]:
    """(instance key, OpenAI base URL) of each live instance of the home."""
    if not read_json(home.files.instances):  # no fleet: skip importing serving (a third of a second)
        return []
    from serving.fleet import Fleet
    from serving.launcher import LocalLauncher

    records = Fleet(home.state, LocalLauncher(home.logs)).records()
    return [(key, record.base_url) for key, record in records.items() if record.adapter_of is None]


def publish(home: FledgeHome, targets_dir: Path) -> Path:
    plane = read_plane_record(home)
    return write_scrape_targets(targets_dir, plane["url"] if plane else None, fleet_instances(home))
