"""The team stack: what one command brings up on this machine from nothing, so that releases
run against shared servers instead of the embedded SQLite stores.

  PostgreSQL 15   the store of both servers (its own cluster, databases mlflow and prefect)
  MLflow          tracking server and registry, artifacts proxied through it
  Prefect         server, work pools cpu and gpu, a process worker on each (the gpu one
                  as on another host: own directory, HOME and homes, shared URLs only)
  Prometheus      scrapes the serving plane (gateway, vLLM instances) from file_sd targets

`up(home)` starts what does not run healthy (idempotent), `status(home)` reports each
component, `down(home)` stops what `up` started and nothing else. Every process is detached
(a session of its own) and recorded in FLEDGE_HOME/state/stack.json; logs are in
FLEDGE_HOME/logs/stack/; `source FLEDGE_HOME/stack/env` points a shell at the stack.
The Debian packages come from scripts/stack-setup.sh. Prefect is never imported here: its
CLI runs as a subprocess, so this package stays below the Prefect layers.
"""

from fledge.stack.lifecycle import down, leftover_pids, stack_processes, status, up

__all__ = ["up", "status", "down", "leftover_pids", "stack_processes"]
