"""Cold start time and memory of one vLLM instance on CPU serving a zoo model.

Memory is the resident set of the whole process tree (API server, engine core, workers),
read with psutil once the server answers; start time is from launch to healthy.

    .venv/bin/python benchmarks/vllm_footprint.py --runs 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fledge.services.evaluate import server_config  # noqa: E402
from fledge.core.policy import load_policy  # noqa: E402
from fledge.devtools.zoo.build import build_zoo  # noqa: E402
from serving.launcher import LocalLauncher  # noqa: E402


def tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--variant", default="base")
    args = parser.parse_args()
    zoo = build_zoo()
    launcher = LocalLauncher(Path(tempfile.mkdtemp(prefix="fledge-footprint-")))
    for run in range(args.runs):
        config = server_config(load_policy().serving, zoo[args.variant].path, f"footprint/{run}", None)
        with launcher.start(config) as handle:
            rss = tree_rss(handle.pid)
            print(f"run {run + 1}: ready in {handle.started_s:.1f} s, resident memory {rss / 2**30:.2f} GiB "
                  f"(KV cache {config.kv_cache_gib:g} GiB)", flush=True)


if __name__ == "__main__":
    main()
