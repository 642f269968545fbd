#!/usr/bin/env bash
# Run the test suite in the project's environment. pytest's exit code 5 ("no tests were
# collected", e.g. a -m selection that matches nothing) is reported, not treated as success.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
"$root/.venv/bin/python" -m pytest "$@"
code=$?
if [[ $code -eq 5 ]]; then
  echo "test.sh: pytest collected no tests for this selection (exit 5)" >&2
fi
exit $code
