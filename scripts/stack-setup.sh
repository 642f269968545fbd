#!/usr/bin/env bash
# Install what the team stack (fledge/stack, `python -m fledge.stack up`) needs beyond the
# project's virtual environment: Debian's PostgreSQL 15, Prometheus and Chromium, and the
# Python clients (psycopg2 for MLflow's PostgreSQL store, asyncpg for Prefect's, Playwright
# to drive Chromium). Idempotent: what is installed already is skipped, so a second run
# returns in about a second without touching the network.
#
# Playwright is installed from PyPI only: its own browser download (`playwright install`) is
# never run. Tests and tools launch Debian's /usr/bin/chromium through `executable_path`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FLEDGE_VENV:-$root/.venv}"

# Debian packages, each with a file that proves it is installed (dpkg -s is slower and a
# package can be "installed" with its binary removed).
declare -A proof=(
  [postgresql]=/usr/lib/postgresql/15/bin/postgres
  [prometheus]=/usr/bin/prometheus
  [chromium]=/usr/bin/chromium
)
missing=()
for package in "${!proof[@]}"; do
  [[ -x "${proof[$package]}" ]] || missing+=("$package")
done
if (( ${#missing[@]} )); then
  if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
    command -v sudo >/dev/null || { echo "stack-setup: ${missing[*]} missing and not root (no sudo): install them as root" >&2; exit 1; }
  else
    sudo=()
  fi
  echo "stack-setup: installing Debian packages: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  # The stack runs its own PostgreSQL cluster; the package's default cluster is not needed
  # but is harmless (Debian does not start it in a container without systemd).
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  for package in "${missing[@]}"; do
    [[ -x "${proof[$package]}" ]] || { echo "stack-setup: $package installed but ${proof[$package]} is missing" >&2; exit 1; }
  done
fi

# Python clients, into the project's environment (listed in pyproject's dev extra too).
[[ -x "$venv/bin/python" ]] || { echo "stack-setup: no virtual environment at $venv; run scripts/setup.sh first" >&2; exit 1; }
if ! "$venv/bin/python" -c "import psycopg2, asyncpg, playwright, prometheus_client" 2>/dev/null; then
  echo "stack-setup: installing psycopg2-binary, asyncpg, playwright into $venv"
  if [[ -x "$venv/bin/uv" ]]; then
    if [[ -z "${UV_FIND_LINKS:-}" && -n "${PIP_FIND_LINKS:-}" && -d "${PIP_FIND_LINKS%% *}" ]]; then
      export UV_FIND_LINKS="${PIP_FIND_LINKS%% *}"
    fi
    "$venv/bin/uv" pip install --quiet --python "$venv/bin/python" psycopg2-binary asyncpg playwright prometheus-client
  else
    "$venv/bin/python" -m pip install -q psycopg2-binary asyncpg playwright prometheus-client
  fi
fi
echo "stack-setup: ready (postgres, prometheus, chromium, python clients)"
