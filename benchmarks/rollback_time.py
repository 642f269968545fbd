"""Fault to rollback: how long a broken canary keeps traffic, and what clients notice.

Two vLLM instances behind the gateway (`base` stable, `improved` canary at the first canary
step), steady non-streamed client traffic; the canary's vLLM process group is killed
(SIGKILL). Measured per trial: seconds from the kill to the canary's *effective* 0 % (the
gateway's outlier detection ejects it: no new request goes there), seconds to the rollout's
recorded rollback (the driver's next look), and client requests that failed (the gateway
retries on stable before the first byte, within its retry budget, so the goal is none).
Each trial restarts the canary. Goals: fault to 0 % <= 1 s, zero failed requests.

    .venv/bin/python benchmarks/rollback_time.py --trials 3
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai  # noqa: E402

from fledge.services.evaluate import server_config  # noqa: E402
from fledge.core.policy import load_policy  # noqa: E402
from fledge.devtools.zoo.build import build_zoo  # noqa: E402
from serving.canary.state_machine import Phase  # noqa: E402
from serving.canary.driver import RolloutDriver  # noqa: E402
from serving.gateway.client import GatewayAdmin  # noqa: E402
from serving.gateway.routes import Backend  # noqa: E402
from serving.gateway.server import BackgroundGateway, build_gateway  # noqa: E402
from serving.launcher import LocalLauncher  # noqa: E402


def trial(admin, gateway_url, launcher, policy, zoo, stable_version, index, state_dir, clients=3):
    canary_version = f"bench/canary-{index}"
    canary = launcher.start(server_config(load_policy().serving, zoo["improved"].path, canary_version, "1"))
    admin.add_backend("bench", Backend(version=canary_version, base_url=canary.base_url, role="canary"))
    failures, sent, done, killed = [], [0], threading.Event(), {}

    def traffic():
        client = openai.OpenAI(base_url=f"{gateway_url}/v1", api_key="x", max_retries=0, timeout=60)
        while not done.is_set():
            try:
                client.completions.create(model="bench", prompt="Q: What is 2 plus 3?\nA:", max_tokens=4, temperature=0)
            except openai.APIError as error:
                failures.append(error)
            sent[0] += 1

    def on_tick(state, analysis, action):
        if state.phase is Phase.BAKING and analysis is not None and not killed:
            os.killpg(canary.pid, signal.SIGKILL)
            killed["t"] = time.monotonic()

    def effective_zero():
        while not done.is_set() and "zero" not in killed:
            if "t" in killed and admin.effective_weights().get(canary_version, 100) == 0:
                killed["zero"] = time.monotonic()
            time.sleep(0.01)

    workers = [threading.Thread(target=traffic) for _ in range(clients)] + [threading.Thread(target=effective_zero)]
    for w in workers:
        w.start()
    try:
        final = RolloutDriver(admin, policy, state_dir / f"rollout-{index}.json", on_tick=on_tick).start("bench", stable_version, canary_version)
    finally:
        done.set()
        for w in workers:
            w.join()
        canary.stop()
    admin.drain(canary_version, deadline_s=0)
    admin.remove_backend(canary_version)
    zero = killed.get("zero", final.history[-1].at) - killed["t"]
    return zero, final.history[-1].at - killed["t"], len(failures), sent[0], final.phase


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    policy = load_policy().canary.model_copy(update={"steps": [25, 100], "bake_seconds": 120})
    zoo = build_zoo()
    state = Path(tempfile.mkdtemp(prefix="fledge-rollback-bench-"))
    launcher = LocalLauncher(state / "logs")
    rows = []
    with launcher.start(server_config(load_policy().serving, zoo["base"].path, "bench/stable", "0")) as stable, \
         BackgroundGateway(build_gateway(state, load_policy().serving.gateway)) as gateway:
        admin = GatewayAdmin(gateway.url, (state / "gateway-admin-token").read_text())
        admin.add_backend("bench", Backend(version="bench/stable", base_url=stable.base_url, role="stable"))
        for index in range(args.trials):
            zero, recorded, failed, sent, phase = trial(admin, gateway.url, launcher, policy, zoo, "bench/stable", index, state)
            rows.append((zero, recorded, failed, sent))
            print(f"trial {index + 1}: {phase.value}, fault to effective 0 % {zero:.2f} s, to the recorded rollback "
                  f"{recorded:.2f} s, failed client requests {failed} of {sent}", flush=True)
    print(f"analysis interval {policy.analysis_interval_seconds:g} s; fault to effective 0 %: median "
          f"{statistics.median(r[0] for r in rows):.2f} s, max {max(r[0] for r in rows):.2f} s; to the recorded rollback: "
          f"median {statistics.median(r[1] for r in rows):.2f} s; "
          f"failed client requests: {sum(r[2] for r in rows)} of {sum(r[3] for r in rows)}")


if __name__ == "__main__":
    main()
