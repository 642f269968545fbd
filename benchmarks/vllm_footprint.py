"""Start time and memory of one vLLM instance on CPU, per launch variant, side by side.

Variants, interleaved run by run so machine noise hits all alike:
- `bare`: the default launch (`VLLM_CPU_KVCACHE_SPACE=1 python -m vllm.entrypoints.openai.api_server
  --model DIR --enforce-eager --dtype float32 --max-model-len 256`), the reference;
- `bare+inproc`: the same with VLLM_ENABLE_V1_MULTIPROCESSING=0 (no separate worker process);
- `bare+inproc+nocompile`: also TORCH_COMPILE_DISABLE=1;
- `fledge cold`: Fledge's LocalLauncher starting a new interpreter per server (FLEDGE_PREFORK=0;
  guardian, its environment, readiness on /health and /v1/models);
- `fledge warm`: the same, forked from the warm launcher (`serving.prefork`, the default), which
  is started once before the runs; its own import time and memory are printed separately.

Start time is from launch until `/v1/models` answers; memory is the proportional set size (PSS:
pages shared with other processes, such as the warm launcher's, split among them) of the
server's process tree once ready; "first logprobs" is the first `echo`+`logprobs` completion
(what lm-eval's log-likelihood tasks send), which pays any lazy compilation.

    .venv/bin/python benchmarks/vllm_footprint.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fledge.core.policy import load_policy  # noqa: E402
from fledge.devtools.zoo.build import build_zoo  # noqa: E402
from fledge.services.evaluate import server_config  # noqa: E402
from serving.launcher import LocalLauncher  # noqa: E402

BARE_ENV = {
    "bare": {},
    "bare+inproc": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
    "bare+inproc+nocompile": {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TORCH_COMPILE_DISABLE": "1"},
}


def tree_pss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_full_info().pss for p in [root, *root.children(recursive=True)])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def first_logprobs_seconds(base_url: str, model: str) -> float:
    started = time.perf_counter()
    httpx.post(f"{base_url}/completions", json={"model": model, "prompt": "Q: What is 1 plus 2?\nA: 3", "max_tokens": 1,
                                                 "echo": True, "logprobs": 1, "temperature": 0}, timeout=300).raise_for_status()
    return time.perf_counter() - started


def bare(model_dir: Path, extra_env: dict[str, str], log: Path) -> dict[str, float]:
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", **extra_env}
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--port", str(port),
               "--enforce-eager", "--dtype", "float32", "--max-model-len", "256"]
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the bare launch exited; see {log}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        ready = time.monotonic() - started
        pss = tree_pss(process.pid)
        return {"start_s": ready, "pss_gib": pss / 2**30,
                "logprobs_s": first_logprobs_seconds(f"http://127.0.0.1:{port}/v1", str(model_dir))}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


SERVING = load_policy().serving


def fledge(model_dir: Path, launcher: LocalLauncher, name: str) -> dict[str, float]:
    config = server_config(SERVING, model_dir, name, None)
    with launcher.start(config) as handle:
        return {"start_s": handle.started_s, "pss_gib": tree_pss(handle.pid) / 2**30,
                "logprobs_s": first_logprobs_seconds(handle.base_url, config.served_model_name)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--variant", default="base", help="zoo model to serve")
    args = parser.parse_args()
    model_dir = build_zoo()[args.variant].path
    logs = Path(tempfile.mkdtemp(prefix="fledge-footprint-"))
    launchers = {"fledge cold": LocalLauncher(logs, prefork=False), "fledge warm": LocalLauncher(logs, prefork=True)}
    warm_up = fledge(model_dir, launchers["fledge warm"], "footprint/warm-up")  # starts the warm launcher
    warm_launcher = next(p for p in psutil.Process().children() if "serving.prefork" in " ".join(p.cmdline()))
    results: dict[str, list[dict[str, float]]] = {name: [] for name in [*BARE_ENV, *launchers]}
    for run in range(args.runs):
        for name, extra in BARE_ENV.items():
            results[name].append(bare(model_dir, extra, logs / f"{name}-{run}.log"))
        for name, launcher in launchers.items():
            results[name].append(fledge(model_dir, launcher, f"footprint/{name.split()[1]}-{run}"))
        print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{n} {r[-1]['start_s']:.1f} s" for n, r in results.items()),
              flush=True)

    reference = statistics.median(r["start_s"] for r in results["bare"])
    print(f"\n{'variant':24s} {'start (median)':>15s} {'x bare':>7s} {'memory':>9s} {'first logprobs':>15s}")
    for name, rows in results.items():
        start = statistics.median(r["start_s"] for r in rows)
        print(f"{name:24s} {start:13.1f} s {start / reference:7.2f} {statistics.median(r['pss_gib'] for r in rows):7.2f} GiB "
              f"{statistics.median(r['logprobs_s'] for r in rows):13.2f} s")
    print(f"\n{args.runs} runs of each, interleaved; starts are from launch until /v1/models answers.")
    print(f"The warm launcher, once per interpreter: first start {warm_up['start_s']:.1f} s (its imports included), "
          f"{warm_launcher.memory_full_info().pss / 2**30:.2f} GiB PSS itself.")


if __name__ == "__main__":
    main()
