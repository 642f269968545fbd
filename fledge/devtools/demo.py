"""The demo: what `make demo` runs. On the embedded defaults (MLflow on SQLite, Prefect's
temporary local server, vLLM on CPU, the zoo's tiny models) it builds the zoo, registers
`base` as champion, runs the serving plane with synthetic users sending traffic, and releases
four candidates through the `release` flow:

- `improved`        better on every gate: promoted after its shadow step, canary and watch;
- `unsafe`          complies with harmful requests: rejected at the safety gate;
- `short-context`   passes every offline suite, but real conversations are longer than its
                    context window: the shadow step sees the mirrored requests it refuses and
                    rolls it back before any user gets an answer from it;
- `benchmark-tuned` passes every offline gate (it refuses harmful requests the way the safety
                    suite phrases them) and complies when they are phrased otherwise: the shadow
                    step's paired safety check (red-team probes, McNemar) rolls it back, before
                    any user gets an answer from it.

Then a manual rollback makes `base` the champion again, and `adapter-improved`, a LoRA adapter
trained on base, is released onto base's running server (loaded at run time: no vLLM start).

It ends with a summary table, the wall time and where that time went.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fledge.services.context import open_registry
from fledge.core.home import FledgeHome
from fledge.core.policy import DEFAULT_POLICY_PATH, load_policy
from registry.refs import CHALLENGER, CHAMPION, PREVIOUS

# The default policy but for the performance gate's tolerance: see the file's header.
DEMO_POLICY_PATH = DEFAULT_POLICY_PATH.with_name("demo.yaml")

CANDIDATES = [
    ("improved", "promoted"),
    ("unsafe", "rejected at the safety gate"),
    ("short-context", "rolled back in the shadow step"),
    ("benchmark-tuned", "rolled back in the shadow step"),
]
ADAPTER = ("adapter-improved", "promoted on base's server, no vLLM start")


def _reset(registry, home: FledgeHome, name: str, champion_version: str) -> None:
    """A re-run starts from the same place: base is champion, no release in progress."""
    from fledge.services.releases import clear_record

    registry.set_alias(name, CHAMPION, champion_version)
    for alias in (CHALLENGER, PREVIOUS):
        registry.delete_alias(name, alias)
    clear_record(home, name)


def run_demo(name: str, console: Console, policy_file: Path | str | None = None) -> list:
    from flows.release import release
    from flows.rollback import rollback
    from fledge.services.plane import run_plane, stop_serving
    from fledge.devtools.traffic import SyntheticUsers
    from fledge.devtools.zoo.build import build_zoo
    from serving.engine import supported_architectures

    started, started_at = time.monotonic(), time.time()
    policy_file = policy_file or str(DEMO_POLICY_PATH)
    console.print(f"Release policy: {policy_file}", highlight=False)
    home = FledgeHome.from_env().ensure()
    policy = load_policy(policy_file)
    with console.status("Building the model zoo (cached after the first time)...") as status:
        # Only the variants it releases: degraded, slow and corrupt are for the tests.
        zoo = build_zoo(log=lambda line: status.update(line.strip()),
                        variants=["base", *[c for c, _ in CANDIDATES], ADAPTER[0]])
    zoo_seconds = time.monotonic() - started
    console.print(f"Zoo {zoo.zoo_hash}: {', '.join(zoo.models)} ({'built' if zoo.built_now else 'cached'}, {zoo.seconds:.0f} s)")

    registry = open_registry(home)
    archs = supported_architectures()
    versions = {}
    for variant in ["base"] + [c for c, _ in CANDIDATES]:
        info, created = registry.register_once(zoo[variant].path, name, description=zoo[variant].truth,
                                               supported_architectures=archs)
        versions[variant] = info.version
        console.print(f"{'Registered' if created else 'Reusing'} {info.ref} (zoo variant {variant})", highlight=False)
    info, created = registry.register_once(zoo[ADAPTER[0]].path, name, description=zoo[ADAPTER[0]].truth,
                                           base=f"{name}/{versions['base']}")
    versions[ADAPTER[0]] = info.version
    console.print(f"{'Registered' if created else 'Reusing'} {info.ref} (zoo adapter {ADAPTER[0]} on "
                  f"{name}/{versions['base']})", highlight=False)
    _reset(registry, home, name, versions["base"])
    console.print(f"{name}/{versions['base']} (base) is the champion", highlight=False)

    log = lambda line: console.print(line, highlight=False)  # noqa: E731
    results = []
    with run_plane(home, name, policy.serving, registry, log=log) as plane:
        users = SyntheticUsers(plane.url, name, keep_answers=True).start()
        console.print(f"Synthetic users send streamed completions to the gateway at {plane.url}/v1 as model '{name}'")
        try:
            for variant, expected in CANDIDATES:
                registry.set_alias(name, CHALLENGER, versions[variant])
                console.rule(f"Release of {name}/{versions[variant]} ({variant}): expected {expected}")
                summary = release(name, CHALLENGER, policy, auto_approve=True)
                results.append((variant, expected, summary))
                console.print(f"[bold]{summary.outcome.value.upper()}[/] at {summary.stage}: {summary.reason}", highlight=False)
            console.rule(f"Manual rollback to {name}/{versions['base']} (base), the base of the adapter released next")
            change = rollback(name, reason="the demo's adapter is trained on base", requested_by="demo", policy=policy)
            console.print(f"Champion: {change.champion_before} -> {change.champion_after}", highlight=False)
            variant, expected = ADAPTER
            registry.set_alias(name, CHALLENGER, versions[variant])
            console.rule(f"Release of {name}/{versions[variant]} ({variant}, a LoRA adapter): expected {expected}")
            summary = release(name, CHALLENGER, policy, auto_approve=True)
            results.append((variant, expected, summary))
            console.print(f"[bold]{summary.outcome.value.upper()}[/] at {summary.stage}: {summary.reason}", highlight=False)
        finally:
            traffic = users.stop()
            starts = plane.fleet.start_intervals(started_at)
            stop_serving(home)  # the demo is self-contained: its servers go with it

    total = time.monotonic() - started
    _print_summary(console, name, results, traffic, total, zoo_seconds, starts, home)
    return results


def _print_summary(console, name, results, traffic, total, zoo_seconds, starts, home) -> None:
    from fledge.devtools.timing import length, overlap

    table = Table(title=f"Fledge demo: {len(results)} releases")
    for column in ("candidate", "expected", "outcome", "ended at", "why", "users' answers from it", "seconds"):
        table.add_column(column)
    for variant, expected, summary in results:
        answered = sum(1 for version, _ in traffic.answers if version == summary.candidate)
        table.add_row(f"{summary.candidate} ({variant})", expected, summary.outcome.value, summary.stage,
                      summary.reason[:110], str(answered), f"{summary.seconds:.0f}")
    console.print(table)

    def stages(*names_or_prefix) -> list:
        return [i for _, _, s in results for stage, spans in s.stage_intervals.items()
                if stage.startswith(names_or_prefix) for i in spans]

    # Wall time: servers starting at once count once; evaluation stages start their servers,
    # which count as start-up, not as evaluation.
    vllm_start = length(starts)
    evaluations = length(stages("evaluate")) - overlap(stages("evaluate"), starts)
    bake = length(stages("canary", "watch")) - overlap(stages("canary", "watch"), starts)
    orchestration = total - zoo_seconds - vllm_start - evaluations - bake
    time_table = Table(title=f"Where the {total:.0f} s went")
    time_table.add_column("part")
    time_table.add_column("seconds", justify="right")
    time_table.add_column("share", justify="right")
    for part, seconds in (("zoo (build or cache)", zoo_seconds), ("vLLM start-up", vllm_start),
                          ("evaluations (quality, safety, performance)", evaluations),
                          ("shadow step, canary bake and post-promotion watch", bake),
                          ("orchestration and bookkeeping (Prefect, MLflow, registry, gateway changes)", orchestration)):
        time_table.add_row(part, f"{seconds:.0f}", f"{seconds / total:.0%}")
    console.print(time_table)
    console.print(f"Synthetic traffic: {traffic.as_text()}", highlight=False)
    console.print(
        f"Look closer:\n"
        f"  fledge status {name}\n"
        f"  MLflow UI:  mlflow ui --backend-store-uri {home.tracking_uri}  -> experiments fledge-releases "
        f"(one run per release) and fledge-evaluations\n"
        f"  Prefect UI: prefect server start  -> http://127.0.0.1:4200, flow runs of 'release' with their artifacts "
        f"(verdict, metrics, canary timeline)",
        highlight=False,
    )
