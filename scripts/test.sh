#!/usr/bin/env bash
# Run the test suite in the project's environment: the import contracts first (lint-imports,
# seconds), then pytest, which prints the 15 slowest tests so the time budget shows in every
# log. pytest's exit code 5 ("no tests were collected", e.g. a -m selection that matches
# nothing) is reported, not treated as success.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
"$root/.venv/bin/lint-imports" --no-logo "$root/pyproject.toml" || { echo "test.sh: an import breaks the layers (see above; docs/ARCHITECTURE.md)" >&2; exit 1; }
"$root/.venv/bin/python" -m pytest --durations=15 "$@"
code=$?
if [[ $code -eq 5 ]]; then
  echo "test.sh: pytest collected no tests for this selection (exit 5)" >&2
fi
exit $code
