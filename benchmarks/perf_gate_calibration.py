"""Calibrate the performance gate: how often it cries wolf, how often it catches a slow model.

A/A: two instances of the zoo's `base` (the same model) compared N times: every FAIL is a
false alarm. A/B: `improved` against `slow` (same outputs, 4x the layers) N times: every FAIL
is a detection. Each trial is one full benchmark (alternating blocks, same prompts, the
policy's interim look and extension) and one gate decision with the default policy, exactly as
a release runs it. Prints the rates, the ratio figures, how many blocks were measured and the
wall time.

    .venv/bin/python benchmarks/perf_gate_calibration.py --trials 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evals.endpoint import Endpoint  # noqa: E402
from evals.datasets import QUESTION_DATASETS, read_prompts  # noqa: E402
from evals.gates import performance_gate  # noqa: E402
from fledge.core.outcome import Outcome  # noqa: E402
from fledge.services.evaluate import benchmark_until_decided, core_plan, server_config  # noqa: E402
from fledge.core.policy import load_policy  # noqa: E402
from fledge.devtools.zoo.build import build_zoo  # noqa: E402
from serving.launcher import LocalLauncher  # noqa: E402


def compare(champion_dir: Path, candidate_dir: Path, label: str, trials: int, policy, launcher) -> dict:
    cores = core_plan(2, comparing_speed=True)
    prompts = read_prompts(list(QUESTION_DATASETS))
    with launcher.start(server_config(policy.serving, champion_dir, f"{label}-champion/1", cores[0])) as a, \
         launcher.start(server_config(policy.serving, candidate_dir, f"{label}-candidate/1", cores[1])) as b:
        champion, candidate = Endpoint(a.base_url, a.config.served_model_name), Endpoint(b.base_url, b.config.served_model_name)
        outcomes, ratios, blocks = [], [], []
        started = time.monotonic()
        for trial in range(trials):
            report = benchmark_until_decided(policy, champion, candidate, prompts, log=lambda _: None)
            gate = performance_gate(policy.performance, report)
            check = gate.checks[-1]
            outcomes.append(gate.outcome)
            ratios.append(check.measured)
            blocks.append(len({r.block for r in report.records}))
            print(f"  {label} trial {trial + 1}/{trials}: {gate.outcome.value:12s} {blocks[-1]:2d} blocks  {check.detail}",
                  flush=True)
        return {"outcomes": outcomes, "ratios": ratios, "blocks": blocks, "seconds": time.monotonic() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--policy", type=Path, default=None)
    args = parser.parse_args()
    policy = load_policy(args.policy)
    zoo = build_zoo()
    launcher = LocalLauncher(Path(tempfile.mkdtemp(prefix="fledge-calibration-")))
    started = time.monotonic()
    aa = compare(zoo["base"].path, zoo["base"].path, "A/A base-vs-base", args.trials, policy, launcher)
    ab = compare(zoo["improved"].path, zoo["slow"].path, "A/B improved-vs-slow", args.trials, policy, launcher)

    def share(result, outcome):
        return sum(o is outcome for o in result["outcomes"]) / len(result["outcomes"])

    print()
    print(f"policy {policy.content_hash}: metric {policy.performance.metric}, tolerated slowdown "
          f"{policy.performance.tolerated_slowdown:.0%}, {policy.performance.blocks} blocks x "
          f"{policy.performance.requests_per_block} requests, N = {args.trials} trials each")
    for name, result in (("A/A", aa), ("A/B", ab)):
        ratios = [r for r in result["ratios"] if r is not None]
        print(f"{name}: fail {share(result, Outcome.FAIL):.0%}, pass {share(result, Outcome.PASS):.0%}, "
              f"inconclusive {share(result, Outcome.INCONCLUSIVE):.0%}; median ratio "
              f"{statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}); "
              f"{statistics.mean(result['blocks']):.1f} blocks and {result['seconds'] / args.trials:.1f} s per trial")
    print(f"false-alarm rate (A/A fail): {share(aa, Outcome.FAIL):.1%}   goal <= 5 %")
    print(f"detection rate (A/B fail):   {share(ab, Outcome.FAIL):.1%}   goal >= 95 %")
    print(f"wall time: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
