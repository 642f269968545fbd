"""Where the team stack of one Fledge home keeps its files.

Everything lives under FLEDGE_HOME (logs/stack, state/stack.json, stack/...), except
PostgreSQL's cluster: the server runs as the `postgres` user, which cannot enter a home
under /root (mode 0700). Its cluster goes to /var/lib/fledge-stack/<16 hex of the home's
path>/, owned by postgres, one per home so two homes never share a database. Without root
(no postgres user to switch to) the cluster stays under the home and runs as the caller.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from fledge.core.home import FledgeHome
from fledge.core.scrape_targets import targets_dir

PG_ROOT = Path(os.environ.get("FLEDGE_STACK_PG_ROOT", "/var/lib/fledge-stack"))
PG_BIN = Path(os.environ.get("FLEDGE_STACK_PG_BIN", "/usr/lib/postgresql/15/bin"))
PROMETHEUS_BIN = Path("/usr/bin/prometheus")


def home_digest(root: Path) -> str:
    """16 hex digits naming a home by its resolved path (stable across runs, unique per path)."""
    return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]


def runs_as_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class StackLayout:
    home: FledgeHome

    @classmethod
    def of(cls, home: FledgeHome | Path | str) -> "StackLayout":
        return cls(home if isinstance(home, FledgeHome) else FledgeHome(Path(home).expanduser().resolve()))

    @property
    def root(self) -> Path:
        return self.home.root / "stack"

    @property
    def logs(self) -> Path:
        return self.home.logs / "stack"

    def log(self, component: str) -> Path:
        return self.logs / f"{component}.log"

    @property
    def state_file(self) -> Path:
        return self.home.state / "stack.json"

    @property
    def lock_file(self) -> Path:
        return self.home.state / "stack.lock"

    @property
    def env_file(self) -> Path:
        return self.root / "env"

    @property
    def plane_config(self) -> Path:
        return self.root / "plane.json"  # the models `up --serve` named: the plane serves them from then on

    @property
    def password_file(self) -> Path:
        return self.root / "db-password"  # 0600: the role's password, never in the state file or a command line

    # PostgreSQL
    @property
    def pg_root(self) -> Path:
        """The cluster's directory: the unix socket lives here, the data in pgdata/ below."""
        return PG_ROOT / home_digest(self.home.root) if runs_as_root() else self.root / "postgres"

    @property
    def pgdata(self) -> Path:
        return self.pg_root / "pgdata"

    # MLflow
    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    # Prefect: the server's home, and each worker's own directory (the GPU one stands for another host)
    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    def worker_dir(self, pool: str) -> Path:
        return self.root / f"{pool}-host"

    # Prometheus
    @property
    def prometheus(self) -> Path:
        return self.root / "prometheus"

    @property
    def prometheus_config(self) -> Path:
        return self.prometheus / "prometheus.yml"

    @property
    def prometheus_data(self) -> Path:
        return self.prometheus / "data"

    @property
    def targets(self) -> Path:
        return targets_dir(self.home.root)

    @property
    def rules(self) -> Path:
        return self.prometheus / "rules"

    def ensure(self) -> "StackLayout":
        for path in (self.root, self.logs, self.home.state, self.artifacts, self.prefect_home, self.targets,
                     self.rules, self.prometheus_data):
            path.mkdir(parents=True, exist_ok=True)
        return self
