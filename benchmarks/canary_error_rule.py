"""The canary's error rule on simulated traffic: the A/A false-rollback rate and how fast a
failing canary is rolled back, under the demo's and the default policy.

Each rollout runs the real decisions (serving.canary analysis and controller) on drawn
traffic (fledge.devtools.rollout_simulation): per look the canary and its baseline each get
the requests the synthetic users' ~4 a second give them at the step's share. Rows: the
canary's and the baseline's true error rates; "rolled back" is the share of rollouts that
ended rolled back (for equal rates, the false-rollback rate), "canary requests" what the
canary served before the end (median, max).

    .venv/bin/python benchmarks/canary_error_rule.py [--rollouts 400]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fledge.core.policy import DEFAULT_POLICY_PATH, load_policy  # noqa: E402
from fledge.devtools.rollout_simulation import simulate_rollout  # noqa: E402

USERS_PER_SECOND = 4.0
CASES = [(0.0, 0.0), (0.005, 0.005), (0.01, 0.01), (0.02, 0.02), (0.05, 0.0), (0.10, 0.0), (0.10, 0.02), (1.0, 0.0)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rollouts", type=int, default=400)
    args = parser.parse_args()
    for name in ("demo", "default"):
        policy = load_policy(DEFAULT_POLICY_PATH.with_name(f"{name}.yaml")).canary
        print(f"\n{name} policy: steps {policy.steps}, bake {policy.bake_seconds:g} s, look every "
              f"{policy.analysis_interval_seconds:g} s, {USERS_PER_SECOND:g} users' requests a second, limit "
              f"{policy.max_error_rate:.0%}, {policy.ruled_out_error_rate:.0%} ruled out to pass; {args.rollouts} rollouts a row")
        print("| canary errors | baseline errors | rolled back | canary requests (median / max) |")
        print("|---:|---:|---:|---:|")
        rng = random.Random(20261201)
        for canary_rate, baseline_rate in CASES:
            runs = [simulate_rollout(policy, canary_rate, baseline_rate, USERS_PER_SECOND, rng) for _ in range(args.rollouts)]
            rolled_back = sum(r.phase.value == "rolled_back" for r in runs) / len(runs)
            served = [r.canary_requests for r in runs]
            print(f"| {canary_rate:.1%} | {baseline_rate:.1%} | {rolled_back:.1%} | "
                  f"{statistics.median(served):.0f} / {max(served)} |", flush=True)


if __name__ == "__main__":
    main()
