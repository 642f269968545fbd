"""Wall time of releasing a LoRA adapter vs releasing the equivalent full model, in one run.

The zoo's `adapter-improved` (a LoRA adapter on `base`) and the same adapter merged into base's
weights (peft's merge_and_unload: one full checkpoint that answers the same) are released, one
after the other, through the release flow against `base` as champion, on one serving plane with
LoRA enabled and synthetic users sending traffic. Between the two, a manual rollback makes base
the champion again. The adapter release should pay no vLLM start: it is loaded onto base's
running server; the full model needs a server of its own (and a baseline instance of base).

    .venv/bin/python benchmarks/adapter_release.py [--order adapter-first]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fledge.core.home import FledgeHome  # noqa: E402
from fledge.core.policy import DEFAULT_POLICY_PATH, load_policy  # noqa: E402
from fledge.devtools.zoo.build import build_zoo  # noqa: E402

MODEL = "adapter-bench"


def merged_checkpoint(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    PeftModel.from_pretrained(model, adapter_dir).merge_and_unload().save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out_dir)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--order", choices=["full-first", "adapter-first"], default="full-first")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.testing.utilities import prefect_test_harness

    from fledge.devtools.traffic import SyntheticUsers
    from fledge.services.context import open_registry
    from fledge.services.plane import run_plane, stop_serving
    from flows.release import release
    from flows.rollback import rollback

    zoo = build_zoo(variants=["base", "adapter-improved"])
    root = Path(tempfile.mkdtemp(prefix="fledge-adapter-bench-"))
    home = FledgeHome(root / "home").ensure()
    os.environ["FLEDGE_HOME"] = str(home.root)
    policy_path = str(DEFAULT_POLICY_PATH.with_name("demo.yaml"))
    policy = load_policy(policy_path)
    registry = open_registry(home)
    base, _ = registry.register_once(zoo["base"].path, MODEL, alias="champion")
    adapter, _ = registry.register_once(zoo["adapter-improved"].path, MODEL, base=base.ref)
    merged, _ = registry.register_once(merged_checkpoint(zoo["base"].path, zoo["adapter-improved"].path, root / "merged"), MODEL)
    candidates = {"full model (merged)": merged, "adapter": adapter}
    order = list(candidates) if args.order == "full-first" else list(reversed(candidates))
    figures = {}
    with prefect_test_harness(server_startup_timeout=180):
        try:
            with run_plane(home, MODEL, policy.serving, registry) as plane, SyntheticUsers(plane.url, MODEL):
                for kind in order:
                    starts_before = len(plane.fleet.start_intervals(0))
                    began = time.perf_counter()
                    summary = release(MODEL, candidates[kind].version, load_policy(policy_path))
                    seconds = time.perf_counter() - began
                    figures[kind] = (seconds, summary.outcome.value, len(plane.fleet.start_intervals(0)) - starts_before)
                    print(f"{kind}: {summary.outcome.value} in {seconds:.1f} s, {figures[kind][2]} vLLM start(s)", flush=True)
                    rollback(MODEL, reason="benchmark: base again", requested_by="benchmark")
        finally:
            stop_serving(home)
    print()
    print(f"{'release of':24s} {'seconds':>8s} {'outcome':>10s} {'vLLM starts':>12s}")
    for kind, (seconds, outcome, starts) in figures.items():
        print(f"{kind:24s} {seconds:8.1f} {outcome:>10s} {starts:12d}")
    ratio = figures["adapter"][0] / figures["full model (merged)"][0]
    print(f"\nadapter / full model: {ratio:.2f}x the wall time")


if __name__ == "__main__":
    main()
