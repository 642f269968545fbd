"""What the gateway costs: the same streaming load sent direct to vLLM and through the gateway,
interleaved in alternating blocks in one run, so machine noise hits both.

Prints added TTFT and end-to-end latency (p50, p99) and the throughput ratio.
Goals: added TTFT p99 <= 3 ms, throughput >= 0.95x direct.

`--mirror`: a third path, the gateway mirroring every request (share 1.0, one at a time per
side, as the demo's shadow step does) to two more instances of the model, interleaved with the
other two: what mirroring adds to the client's latency on the same machine. On 2 cores the
mirrored requests compete with the client's for CPU, so this is an upper bound for a
deployment whose candidate and baseline have their own GPUs.

    .venv/bin/python benchmarks/gateway_overhead.py --blocks 10 --requests 20 [--mirror]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.datasets import QUESTION_DATASETS, read_prompts  # noqa: E402
from evals.endpoint import Endpoint  # noqa: E402
from evals.perf import measure_request  # noqa: E402
from fledge.services.evaluate import server_config  # noqa: E402
from fledge.core.policy import load_policy  # noqa: E402
from fledge.devtools.zoo.build import build_zoo  # noqa: E402
from serving.gateway.client import GatewayAdmin  # noqa: E402
from serving.gateway.routes import Backend  # noqa: E402
from serving.gateway.server import BackgroundGateway, build_gateway  # noqa: E402
from serving.launcher import LocalLauncher  # noqa: E402

import openai  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--mirror", action="store_true", help="also measure the gateway with mirroring on")
    args = parser.parse_args()
    policy = load_policy()
    zoo = build_zoo()
    state = Path(tempfile.mkdtemp(prefix="fledge-gw-bench-"))
    prompts = read_prompts(list(QUESTION_DATASETS))
    launcher = LocalLauncher(state / "logs")
    # vLLM on core 0, the gateway and this client share core 1: the gateway's own cost shows.
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(launcher.start(server_config(policy.serving, zoo["base"].path, "bench/1", "0")))
        gateway = stack.enter_context(BackgroundGateway(build_gateway(state, load_policy().serving.gateway)))
        admin = GatewayAdmin(gateway.url, (state / "gateway-admin-token").read_text(), model="bench")
        admin.add_backend("bench", Backend(version="bench/1", base_url=server.base_url, role="stable"))
        paths = {
            "direct": (openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0), Endpoint(server.base_url, "bench/1")),
            "gateway": (openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0), Endpoint(f"{gateway.url}/v1", "bench")),
        }
        if args.mirror:
            for key, core in (("bench/2", "1"), ("bench/1+baseline", "1")):
                mirror = stack.enter_context(launcher.start(server_config(policy.serving, zoo["base"].path, key, core)))
                admin.add_backend("bench", Backend(version=key, base_url=mirror.base_url, role="canary"))
            paths["mirrored"] = paths["gateway"]
        for client, endpoint in paths.values():  # warm-up
            for prompt in prompts[:5]:
                measure_request(client, endpoint, prompt, args.max_tokens)
        results = {name: {"ttft": [], "e2e": [], "tokens": 0, "busy": 0.0, "errors": 0} for name in paths}
        names = list(paths)
        started = time.monotonic()
        for block in range(args.blocks):
            order = names[block % len(names):] + names[:block % len(names)]  # each path in each position in turn
            block_prompts = [prompts[(block * args.requests + i) % len(prompts)] for i in range(args.requests)]
            for name in order:
                if name == "mirrored":
                    admin.set_mirror("bench/2", "bench/1+baseline", share=1.0, max_in_flight=1)
                client, endpoint = paths[name]
                t0 = time.perf_counter()
                for prompt in block_prompts:
                    r = measure_request(client, endpoint, prompt, args.max_tokens)
                    if not r["ok"]:
                        results[name]["errors"] += 1
                        continue
                    results[name]["ttft"].append(r["ttft_s"])
                    results[name]["e2e"].append(r["e2e_latency_s"])
                    results[name]["tokens"] += r["output_tokens"]
                results[name]["busy"] += time.perf_counter() - t0
                if name == "mirrored":
                    admin.clear_mirror()
                    mirrored = admin.mirror()
        wall = time.monotonic() - started

    def pct(name, metric, q):
        return float(np.percentile(results[name][metric], q) * 1000)

    n = args.blocks * args.requests
    print(f"{n} streaming requests per path ({args.max_tokens} tokens each), {args.blocks} alternating blocks, {wall:.0f} s")
    for metric in ("ttft", "e2e"):
        for q in (50, 99):
            d, g = pct("direct", metric, q), pct("gateway", metric, q)
            line = f"{metric.upper():4s} p{q}: direct {d:7.2f} ms  gateway {g:7.2f} ms  added {g - d:+6.2f} ms"
            if args.mirror:
                m = pct("mirrored", metric, q)
                line += f"  mirroring on {m:7.2f} ms (vs gateway {m - g:+6.2f} ms)"
            print(line)
    throughput = {name: r["tokens"] / r["busy"] for name, r in results.items()}
    print(f"throughput: direct {throughput['direct']:.0f} tok/s, gateway {throughput['gateway']:.0f} tok/s, "
          f"ratio {throughput['gateway'] / throughput['direct']:.3f}"
          + (f"; mirroring on {throughput['mirrored']:.0f} tok/s, ratio to the gateway "
             f"{throughput['mirrored'] / throughput['gateway']:.3f}" if args.mirror else ""))
    print("errors: " + ", ".join(f"{name} {r['errors']}" for name, r in results.items()))
    if args.mirror:
        print(f"mirrored {mirrored['mirrored']} requests, {mirrored['dropped']} not mirrored (a side busy)")


if __name__ == "__main__":
    main()
