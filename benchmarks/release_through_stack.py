"""One release through the team stack vs the same release in process, in one run.

On a fresh team stack (`python -m fledge.stack up`, a temporary FLEDGE_HOME) with its serving
plane (`up --serve`) and synthetic users, `base` is the champion of `bench-llama` and `improved` its candidate,
under one policy (no approval, so no person's wait; no shadow step; canary 50 -> 100 %). The
candidate is released once each way to warm every cache (Prefect's task results live on each
host: the `gpu` worker's evaluations are cached in its own home), rolled back after each, then
released --trials times each way, alternating, with a rollback after each:

  stack       a run of the `release` deployment created through the Prefect API (the UI's Run
              button), picked up by the `cpu` worker, its quantization and evaluations dispatched
              to the `gpu` pool: timed from the run's creation to its final state
  in-process  `fledge release` on this host against the same Prefect server, MLflow server and
              plane, every step in that command's process: timed from its start to its exit

Both ways do the same work (cached evaluations, a new vLLM for the candidate, the canary and the
watch); the difference is orchestration: queue waits, sub-runs' process starts, the flow's own
bookkeeping. Each release's own accounting (release.json: seconds per stage) is printed with it;
the orchestration share is 1 - (the stages doing the same work both ways: SHARED_WORK) / wall.

    .venv/bin/python benchmarks/release_through_stack.py [--trials 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "bench-llama"


def policy_yaml(path: Path) -> Path:
    import yaml

    from fledge.core.policy import DEFAULT_POLICY_PATH

    data = yaml.safe_load(DEFAULT_POLICY_PATH.with_name("demo.yaml").read_text())
    data["performance"]["tolerated_slowdown"] = 0.5  # the stack's mechanics, not the gate's calibration
    data["canary"].update(steps=[50, 100], bake_seconds=10, analysis_interval_seconds=1, min_samples=10)
    data["watch"].update(window_seconds=8, min_samples=8)
    data["shadow"]["enabled"] = False
    data["approval"]["required"] = False  # the demo's already: no person's wait in either way
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def release_seconds(registry, version: str) -> dict:
    """The newest release run's own accounting of VERSION."""
    runs = registry.runs.search("fledge-releases", f"tags.`fledge.model` = '{MODEL}'", max_results=50)
    for run in runs:  # newest first
        try:
            summary = json.loads(registry.runs.artifact_text(run.run_id, "release.json"))
        except Exception:  # a rollback's run, or a release refused before its summary
            continue
        if summary.get("candidate") == f"{MODEL}/{version}":
            return {"outcome": summary.get("outcome"), "seconds": summary.get("seconds"),
                    "stages": summary.get("stage_seconds", {})}
    return {}


# The stages that do the same work either way. Quantization and evaluations are cached after
# the warm-up, so what is left of their stages is how they are run (in the flow's process, or
# dispatched to the gpu pool and waited for): orchestration, like the queue and process starts.
SHARED_WORK = ("verify", "approval", "serve candidate", "canary and watch")


def shared_work(stages: dict[str, float]) -> float:
    return sum(seconds for stage, seconds in stages.items() if stage in SHARED_WORK)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="fledge-bench-stack-"))
    python = sys.executable
    up = subprocess.run([python, "-m", "fledge.stack", "up", "--home", str(home)], capture_output=True, text=True,
                        cwd=ROOT)
    if up.returncode != 0:
        print(up.stdout + up.stderr)
        return 2
    from fledge.stack import envfile

    env = envfile.read(home / "stack" / "env")
    os.environ.update({name: env[name] for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "FLEDGE_HOME")})
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    # Prefect reads its settings at import: imported only now, with the stack's API set.
    from prefect.client.orchestration import get_client

    from fledge.core.home import FledgeHome
    from fledge.core.policy import load_policy
    from fledge.devtools.traffic import SyntheticUsers
    from fledge.devtools.zoo.build import build_zoo
    from fledge.services.context import open_registry
    from flows.deployments import deploy_to_pools
    from registry.refs import CHALLENGER, CHAMPION

    policy_path = policy_yaml(home / "bench.yaml")
    results: dict[str, list[dict]] = {"stack": [], "in-process": []}
    users = None
    try:
        zoo = build_zoo(log=lambda line: None)
        registry = open_registry(FledgeHome(home))
        base, _ = registry.register_once(zoo["base"].path, MODEL, alias=CHAMPION)
        improved, _ = registry.register_once(zoo["improved"].path, MODEL, alias=CHALLENGER)
        deploy_to_pools(load_policy(policy_path), "bench", source=ROOT)
        served = subprocess.run([python, "-m", "fledge.stack", "up", "--home", str(home), "--serve", MODEL,
                                 "--plane-policy", str(policy_path)], capture_output=True, text=True, cwd=ROOT)
        if served.returncode != 0:
            raise RuntimeError(f"the stack's plane did not start:\n{served.stdout}{served.stderr}")
        users = SyntheticUsers(env["FLEDGE_PLANE_URL"], MODEL, users=3).start()
        cli_env = {k: v for k, v in {**os.environ, **env}.items() if k != "FLEDGE_GPU_WORK_POOL"}

        def in_process() -> float:
            began = time.monotonic()
            done = subprocess.run([python, "-m", "fledge.cli.main", "release", MODEL, "--version", improved.version,
                                   "--policy", str(policy_path)], env=cli_env, cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"fledge release exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
            return time.monotonic() - began

        def through_stack() -> float:
            with get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name("release/release")
                run = client.create_flow_run_from_deployment(deployment.id, parameters={
                    "model": MODEL, "candidate": improved.version})
                began = time.monotonic()
                while True:
                    state = client.read_flow_run(run.id).state
                    if state and state.is_final():
                        break
                    time.sleep(0.5)
            if state.name != "Promoted":
                raise RuntimeError(f"the stack's release ended {state.name}: {state.message}")
            return time.monotonic() - began

        def roll_back() -> None:
            subprocess.run([python, "-m", "fledge.cli.main", "rollback", MODEL, "--reason", "benchmark"], env=cli_env,
                           cwd=ROOT, capture_output=True, text=True, check=True)

        print("warm-up releases (fill each host's caches), each rolled back ...", flush=True)
        for warm_up in (through_stack, in_process):
            warm_up()
            roll_back()
        for trial in range(args.trials):
            order = [("stack", through_stack), ("in-process", in_process)]
            for way, release in order if trial % 2 == 0 else order[::-1]:
                seconds = release()
                record = {"wall_s": round(seconds, 2), **release_seconds(registry, improved.version)}
                results[way].append(record)
                print(f"trial {trial + 1} {way:10s} {seconds:6.1f} s  release.json {record.get('seconds', 0):.1f} s  "
                      f"{record.get('stages')}", flush=True)
                roll_back()
    finally:
        if users is not None:
            users.stop()
        subprocess.run([python, "-m", "fledge.stack", "down", "--home", str(home), "--purge"], cwd=ROOT,
                       capture_output=True, text=True)

    def summary(way: str) -> dict:
        walls = [r["wall_s"] for r in results[way]]
        work = [shared_work(r.get("stages") or {}) for r in results[way]]
        return {"median_wall_s": statistics.median(walls), "median_work_s": statistics.median(work),
                "orchestration_share": round(1 - statistics.median(work) / statistics.median(walls), 3)}

    report = {way: summary(way) for way in results}
    report["ratio_stack_to_in_process"] = round(report["stack"]["median_wall_s"] / report["in-process"]["median_wall_s"], 3)
    if args.json:
        print(json.dumps({"trials": results, **report}, indent=2))
    else:
        print(f"\n{'way':12s} {'wall (median)':>14s} {'shared work':>12s} {'orchestration':>14s}")
        for way in ("stack", "in-process"):
            r = report[way]
            print(f"{way:12s} {r['median_wall_s']:13.1f}s {r['median_work_s']:11.1f}s {r['orchestration_share']:13.1%}")
        print(f"stack / in-process wall time: {report['ratio_stack_to_in_process']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
