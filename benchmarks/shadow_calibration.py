"""The shadow step's paired checks, calibrated: false rollbacks on a candidate identical to its
baseline (A/A), and detection of the candidate only live traffic catches (A/B).

Real vLLM instances on CPU behind the gateway, the synthetic users at the demo's rate (their mix
includes sampled requests, temperature 0.8, beside greedy ones), the demo policy's shadow
settings: `base` is stable, a second instance of `base` is the baseline, and the candidate is a
third instance of `base` (A/A) or `benchmark-tuned` (A/B). Each trial mirrors, probes and scores
on a fresh window of pairs until the shadow step's decision (serving.canary.shadow_step) passes,
rolls back or asks a person. Printed: per arm the share rolled back (an A/A "ask" counts as a
false alarm too: it holds a good release for a person), the pairs and seconds each decision took.
Goals: <= 5 % false rollbacks, >= 95 % detection.

    .venv/bin/python benchmarks/shadow_calibration.py --trials 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fledge.core.policy import DEFAULT_POLICY_PATH, load_policy  # noqa: E402
from fledge.devtools.traffic import SyntheticUsers  # noqa: E402
from fledge.devtools.zoo.build import build_zoo  # noqa: E402
from fledge.services.evaluate import server_config  # noqa: E402
from fledge.services.shadow import PairScorer, Prober  # noqa: E402
from serving.canary.paired import analyze_pairs  # noqa: E402
from serving.canary.shadow_step import ShadowActionKind, decide_shadow  # noqa: E402
from serving.gateway.client import GatewayAdmin  # noqa: E402
from serving.gateway.routes import Backend  # noqa: E402
from serving.gateway.server import BackgroundGateway, build_gateway  # noqa: E402
from serving.launcher import LocalLauncher  # noqa: E402

MODEL = "bench"


def shadow_trial(admin: GatewayAdmin, policy, candidate: str) -> tuple[ShadowActionKind, int, float, str]:
    shadow, canary = policy.shadow, policy.canary
    after = admin.mirror()["pairs_seq"]
    admin.set_mirror(candidate, "bench/base+baseline", shadow.mirror_share, shadow.max_in_flight)
    scorer = PairScorer(shadow)
    prober = Prober(admin, shadow, list(scorer.probes.values())).start()
    started = time.monotonic()
    try:
        while True:
            scorer.add(admin.pairs(after=max([after, *scorer.scored])))
            analysis = analyze_pairs(scorer.pairs(after), shadow, canary)
            action = decide_shadow(analysis, time.monotonic() - started, shadow, time.time())
            if action.kind is not ShadowActionKind.CONTINUE:
                return action.kind, analysis.pairs, time.monotonic() - started, action.reason
            time.sleep(canary.analysis_interval_seconds)
    finally:
        prober.stop()
        admin.clear_mirror()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="trials per arm")
    args = parser.parse_args()
    policy = load_policy(DEFAULT_POLICY_PATH.with_name("demo.yaml"))
    zoo = build_zoo(variants=["base", "benchmark-tuned"])
    state = Path(tempfile.mkdtemp(prefix="fledge-shadow-bench-"))
    launcher = LocalLauncher(state / "logs")
    serving = policy.serving
    began = time.monotonic()
    results: dict[str, list] = {"A/A": [], "A/B": []}
    with launcher.start(server_config(serving, zoo["base"].path, "bench/base", "0")) as stable, \
         launcher.start(server_config(serving, zoo["base"].path, "bench/base", "1")) as baseline, \
         launcher.start(server_config(serving, zoo["base"].path, "bench/base-copy", "0")) as same, \
         launcher.start(server_config(serving, zoo["benchmark-tuned"].path, "bench/tuned", "1")) as tuned, \
         BackgroundGateway(build_gateway(state, serving.gateway)) as gateway:
        admin = GatewayAdmin(gateway.url, (state / "gateway-admin-token").read_text(), model=MODEL)
        admin.add_backend(MODEL, Backend(version="bench/base", base_url=stable.base_url, role="stable"))
        admin.add_backend(MODEL, Backend(version="bench/base+baseline", base_url=baseline.base_url, role="baseline",
                                         served_model="bench/base"))
        admin.add_backend(MODEL, Backend(version="bench/base-copy", base_url=same.base_url, role="canary"))
        admin.add_backend(MODEL, Backend(version="bench/tuned", base_url=tuned.base_url, role="canary"))
        with SyntheticUsers(gateway.url, MODEL) as users:
            for index in range(args.trials):
                for arm, candidate in (("A/A", "bench/base-copy"), ("A/B", "bench/tuned")):
                    kind, pairs, seconds, reason = shadow_trial(admin, policy, candidate)
                    results[arm].append((kind, pairs, seconds))
                    print(f"trial {index + 1} {arm}: {kind.value} after {pairs} pairs, {seconds:.1f} s: {reason[:160]}",
                          flush=True)
        print(f"users: {users.stats.as_text()}")
    for arm, rows in results.items():
        stopped = sum(1 for kind, _, _ in rows if kind is not ShadowActionKind.PASS)
        label = "false alarms (rolled back or asked)" if arm == "A/A" else "detected (rolled back)"
        share = stopped if arm == "A/A" else sum(1 for kind, _, _ in rows if kind is ShadowActionKind.ROLLBACK)
        print(f"{arm}: {label} {share}/{len(rows)} ({share / len(rows):.0%}); pairs median "
              f"{statistics.median(r[1] for r in rows):.0f}; seconds median {statistics.median(r[2] for r in rows):.1f}, "
              f"max {max(r[2] for r in rows):.1f}")
    print(f"wall time {time.monotonic() - began:.0f} s (N = {args.trials} per arm)")


if __name__ == "__main__":
    main()
