"""The `fledge` command line."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from fledge.cli.errors import UsageError, friendly
from fledge.services.context import local_launcher, open_registry, quiet_libraries
from fledge.core.home import FledgeHome

app = typer.Typer(
    help="Fledge: release LLMs from the MLflow registry to vLLM serving, gate by gate.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
)
zoo_app = typer.Typer(help="The zoo of tiny locally trained models with known ground truth.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
cache_app = typer.Typer(help="Reused evaluation results of champions.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")
fleet_app = typer.Typer(help="The vLLM servers of this Fledge home: they outlive the gateway.", no_args_is_help=True)
app.add_typer(fleet_app, name="fleet")
lease_app = typer.Typer(help="Who may change a model now: one operator (a release, a rollback, a promotion) at a time.",
                        no_args_is_help=True)
app.add_typer(lease_app, name="lease")
rollout_app = typer.Typer(help="The rollouts the serving plane's controller owns: show, pause, resume, abort, "
                          "approve or reject (the shadow step's question).",
                          no_args_is_help=True)
app.add_typer(rollout_app, name="rollout")
stack_app = typer.Typer(help="The team stack on this machine: PostgreSQL, MLflow and Prefect servers, the cpu and gpu "
                                   "workers, Prometheus (`source FLEDGE_HOME/stack/env` to use it).", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
keys_app = typer.Typer(help="Personal signing keys: who asks for a release and who approves it, by signature.",
                       no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console()


@app.callback()
def _setup() -> None:
    quiet_libraries()


def _human_size(n: int | str | None) -> str:
    if n in (None, ""):
        return "-"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@zoo_app.command("build")
@friendly
def zoo_build() -> None:
    """Build the model zoo, or reuse it from the cache (keyed by a hash of the recipes).

    Example: `fledge zoo build`
    """
    from fledge.devtools.zoo.build import build_zoo

    with console.status("Building the zoo (first time: a few minutes on 2 cores)...") as status:
        zoo = build_zoo(log=lambda line: status.update(line.strip()))
    console.print(
        f"Model zoo {zoo.zoo_hash}: {'built' if zoo.built_now else 'from cache'} in {zoo.seconds:.1f} s, "
        f"in {zoo.root}/<variant>",
        highlight=False,
    )
    table = Table()
    table.add_column("variant", no_wrap=True)
    table.add_column("parameters", no_wrap=True, justify="right")
    table.add_column("stands for")
    for model in zoo.models.values():
        params = model.details.get("parameters")
        table.add_row(model.name, f"{params:,}" if params else "-", model.truth)
    console.print(table)


@cache_app.command("clear")
@friendly
def cache_clear() -> None:
    """Forget every reused champion result: the next evaluations measure the champion again.

    Example: `fledge cache clear`
    """
    from fledge.services.result_cache import ChampionResults

    removed = ChampionResults(FledgeHome.from_env().ensure().evaluation_cache).clear()
    console.print(f"Removed {removed} cached champion result(s).")


@app.command()
@friendly
def register(
    path: Path = typer.Argument(..., help="A local Hugging Face checkpoint directory (safetensors)."),
    name: str = typer.Option(..., "--name", help="Registered model name."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Alias to point at the new version, e.g. challenger."),
    description: Optional[str] = typer.Option(None, "--description", help="Version description."),
    base: Optional[str] = typer.Option(None, "--base", help="For a LoRA adapter: the base model version it was trained on, NAME/VERSION."),
) -> None:
    """Register a checkpoint directory (or a LoRA adapter with --base) as a new version of NAME; prints NAME/VERSION.

    Example: `fledge register ./my-model --name tiny-llama --alias challenger`
    """
    from serving.engine import supported_architectures

    if not path.exists():
        raise UsageError(f"{path} does not exist. Pass the directory that holds config.json and the weights.")
    registry = open_registry()
    version = registry.register(
        path, name, alias=alias, description=description, supported_architectures=supported_architectures(), base=base
    )
    console.print(version.ref, highlight=False)


@app.command()
@friendly
def adopt(ref: str = typer.Argument(..., help="A version Fledge did not register: NAME/VERSION or NAME@ALIAS.")) -> None:
    """Adopt a version logged the ordinary MLflow way (`mlflow.transformers.log_model`, or a
    Hugging Face directory registered from run artifacts): check its files, record their sha256
    manifest on a Fledge run and its digest, layout and flavor as version tags. Evaluations and
    releases adopt on first use; this does it ahead of time.

    Example: `fledge adopt native/1`
    """
    from fledge.core.tags import TAG_FLAVOR, TAG_LAYOUT, TAG_MANIFEST
    from serving.engine import supported_architectures

    home = FledgeHome.from_env().ensure()
    version, adopted_now = open_registry(home).adopt(ref, home.checkpoints, supported_architectures())
    what = "adopted" if adopted_now else "already in Fledge"
    console.print(f"{version.ref} {what}: layout {version.tags.get(TAG_LAYOUT, 'fledge')}, flavor "
                  f"{version.tags.get(TAG_FLAVOR, 'none')}, manifest {version.tags[TAG_MANIFEST][:12]}", highlight=False)


@app.command()
@friendly
def models(name: Optional[str] = typer.Argument(None, help="Only this registered model.")) -> None:
    """List registered versions with aliases, status, size and checksum (read-only: a version
    logged outside Fledge shows "not adopted yet" until it is first used or `fledge adopt`ed).

    Example: `fledge models tiny-llama`
    """
    from fledge.core.tags import TAG_MANIFEST, TAG_SIZE, TAG_SOURCE_VERSION

    registry = open_registry()
    names = [name] if name else registry.model_names()
    if not names:
        console.print("No registered models yet. Try `fledge register PATH --name NAME`.")
        return
    table = Table()
    table.add_column("model", overflow="fold")
    for column in ("version", "aliases", "status", "size", "sha256", "derived from"):
        table.add_column(column, no_wrap=True)
    for model_name in names:
        for v in registry.versions(model_name):
            table.add_row(
                v.name,
                v.version,
                ", ".join(v.aliases) or "-",
                v.status or "-",
                _human_size(v.tags.get(TAG_SIZE)),
                (v.tags.get(TAG_MANIFEST) or "not adopted yet")[:15],
                f"adapter on {v.adapter_base}" if v.adapter_base else v.tags.get(TAG_SOURCE_VERSION, "-"),
            )
    console.print(table)


@app.command()
@friendly
def serve(
    ref: str = typer.Argument(..., help="NAME@ALIAS or NAME/VERSION."),
    port: Optional[int] = typer.Option(None, "--port", help="Port to listen on (default: a free one)."),
    cores: Optional[str] = typer.Option(None, "--cores", help="CPU cores for vLLM, e.g. '0' or '0-1'."),
) -> None:
    """Materialize a version (verifying every checksum) and serve it with vLLM until Ctrl-C.

    Example: `fledge serve tiny-llama@champion --port 8000`
    """
    home = FledgeHome.from_env().ensure()
    version, handle = _serve_version(open_registry(home), home, ref, cores, port)
    console.print(f"Serving [bold]{version.ref}[/] at [bold]{handle.base_url}[/] (model name '{version.ref}'); "
                  f"log: {handle.log_path}. Ctrl-C stops it.", highlight=False)
    try:
        _wait_for_ctrl_c([handle])
    finally:
        handle.stop()
    console.print("Stopped.")


EVAL_EXIT = {"pass": 0, "fail": 1, "inconclusive": 2, "error": 2}


@app.command()
@friendly(exit_code=2)
def quantize(
    ref: str = typer.Argument(..., help="The source version: NAME/VERSION or NAME@ALIAS."),
    scheme: Optional[str] = typer.Option(None, "--scheme", help="none, w8a8-int8 (CPU/GPU), w4a16, w4a16-gptq, fp8-dynamic (GPU). Default: the policy's."),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="Release policy YAML."),
    gate: bool = typer.Option(True, "--gate/--no-gate", help="Serve source and quantized version and gate the result."),
) -> None:
    """Quantize a version into a new version of the same model (lineage-tagged), then gate it
    against its source. Re-quantizing with the same recipe reuses the existing version.

    Exits 0 when the gate passes, 1 when it fails, 2 on inconclusive or error.

    Example: `fledge quantize tiny-llama/3 --scheme w8a8-int8`
    """
    from fledge.core.policy import load_policy
    from fledge.services.quantization import gate_quantized, quantize_version
    from fledge.core.tags import TAG_QUANT_PREFIX, TAG_SOURCE_VERSION

    policy = load_policy(policy_file)
    scheme = scheme or policy.quantization.scheme
    log = lambda line: console.print(f"  {line}", highlight=False)  # noqa: E731
    result = quantize_version(ref, scheme, log=log)
    v = result.version
    console.print(f"{v.ref} ({'reused' if result.reused else 'new'}): {scheme} of {result.source.name}/"
                  f"{v.tags.get(TAG_SOURCE_VERSION, result.source.version)}", highlight=False)
    lineage = Table(show_header=False)
    for key in sorted(k for k in v.tags if k.startswith(TAG_QUANT_PREFIX) or k == TAG_SOURCE_VERSION):
        lineage.add_row(key, v.tags[key])
    console.print(lineage)
    if not gate or scheme == "none":
        return
    with console.status("Serving source and quantized version to gate the quantization..."):
        outcome = gate_quantized(result, policy, log=log)
    table = Table(title=f"quantization gate: {outcome.outcome.value.upper()}")
    table.add_column("check", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("evidence")
    for g in outcome.gates:
        for c in g.checks:
            table.add_row(c.name, c.outcome.value, c.detail)
    console.print(table)
    if outcome.speed_ratio is not None:
        console.print(f"Speed (not gated): quantized/source time per output token {outcome.speed_ratio:.2f}"
                      + (" - int8 is not faster than float32 for tiny models on these CPUs." if outcome.speed_ratio >= 1 else ""),
                      highlight=False)
    console.print(f"MLflow run {outcome.run_id}", highlight=False)
    raise typer.Exit(EVAL_EXIT[outcome.outcome.value])


@app.command("eval")
@friendly(exit_code=2)
def eval_command(
    candidate: str = typer.Argument(..., help="The version to evaluate: NAME/VERSION or NAME@ALIAS."),
    against: Optional[str] = typer.Option(None, "--against", help="The baseline; default NAME@champion."),
    suite: str = typer.Option("all", "--suite", help="quality, safety, perf or all."),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="Release policy YAML (default: policies/default.yaml)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Measure the champion's quality and safety again instead of reusing them."),
) -> None:
    """Evaluate a version against the champion, both served by vLLM; print the verdict table.

    Exits 0 on pass, 1 on fail, 2 on inconclusive or error. Everything is logged to MLflow
    (experiment fledge-evaluations). The champion's quality and safety results are reused
    from earlier evaluations when its files, the policy, the data, the evaluation code and the
    engine are the same (`--no-cache` measures them anyway; `fledge cache clear` forgets them).

    Example: `fledge eval tiny-llama/3 --against tiny-llama@champion --suite all`
    """
    from fledge.services.evaluate import evaluate
    from fledge.core.policy import load_policy
    from registry.refs import parse_ref

    suites = {"all": ("quality", "safety", "performance"), "quality": ("quality",), "safety": ("safety",),
              "perf": ("performance",)}.get(suite)
    if suites is None:
        raise UsageError(f"--suite must be one of quality, safety, perf or all (got '{suite}').")
    policy = load_policy(policy_file)
    against = against or f"{parse_ref(candidate).name}@champion"
    with console.status("Evaluating...") as status:
        result = evaluate(candidate, against, suites, policy, use_cache=not no_cache,
                          log=lambda line: console.print(f"  {line}", highlight=False))
        status.stop()
    _print_verdict(result.verdict)
    console.print(f"MLflow run {result.run_id} (experiment fledge-evaluations), {result.seconds:.0f} s.", highlight=False)
    raise typer.Exit(EVAL_EXIT[result.verdict.outcome.value])


def _print_verdict(verdict) -> None:
    table = Table(title=f"{verdict.candidate_ref} vs {verdict.champion_ref}: {verdict.outcome.value.upper()}")
    table.add_column("gate", no_wrap=True)
    table.add_column("outcome", no_wrap=True)
    table.add_column("evidence")
    colour = {"pass": "green", "fail": "red", "inconclusive": "yellow", "error": "magenta"}
    for gate in verdict.gates:
        evidence = "\n".join(f"{c.name}: {c.detail}" for c in gate.checks) or "; ".join(gate.reasons)
        table.add_row(gate.gate, f"[{colour[gate.outcome.value]}]{gate.outcome.value}[/]", evidence)
    console.print(table)


def _serve_version(registry, home, ref: str, cores: Optional[str] = None, port: Optional[int] = None):
    """Resolve, materialize (verifying every checksum) and serve a version with the policy's
    serving settings."""
    from fledge.core.policy import load_policy
    from fledge.services.evaluate import server_config
    from serving.engine import supported_architectures

    version = registry.resolve(ref)
    if version.adapter_base:
        raise UsageError(
            f"{version.ref} is a LoRA adapter on {version.adapter_base}: it runs on its base's server. Serve the base "
            f"(`fledge serve {version.adapter_base}`) and load it there, or release it through the serving plane "
            f"(`fledge gateway {version.name}`, then `fledge release`).")
    model_dir = registry.materialize(version.ref, home.checkpoints, supported_architectures())
    config = server_config(load_policy().serving, model_dir, version.ref, cores).model_copy(update={"port": port})
    with console.status(f"Starting vLLM for {version.ref} (about a minute)..."):
        handle = local_launcher(home).start(config)
    return version, handle


def _wait_for_ctrl_c(handles) -> None:
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while all(h.is_running() for h in handles):
            time.sleep(1)
        console.print("[red]a vLLM server exited on its own; see its log in FLEDGE_HOME/logs[/]")
    except KeyboardInterrupt:
        console.print("Stopping...")


@app.command()
@friendly
def gateway(
    names: list[str] = typer.Argument(..., metavar="NAME", help="Registered models whose champions the gateway serves as stable."),
    port: int = typer.Option(8080, "--port", help="Gateway port."),
    host: str = typer.Option("127.0.0.1", "--host"),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="Release policy YAML (serving settings)."),
) -> None:
    """Run the serving plane of one or more models until Ctrl-C: the OpenAI-compatible gateway
    with NAME@champion behind it for each NAME. Clients use model name NAME; releases (`fledge
    release NAME`) add their canaries behind it, one rollout per model at a time, and the
    plane's controller runs them. The vLLM servers outlive it: a gateway started again
    re-attaches to the ones still serving (same port: same URL for clients); `fledge fleet
    stop` stops them.

    The admin token is in FLEDGE_HOME/state/gateway-admin-token (or FLEDGE_GATEWAY_ADMIN_TOKEN).

    Example: `fledge gateway tiny-llama support-bot --port 8080`
    """
    from fledge.services.plane import run_plane
    from fledge.core.policy import load_policy

    home = FledgeHome.from_env().ensure()
    with run_plane(home, names, load_policy(policy_file).serving, open_registry(home), host=host, port=port,
                   log=lambda line: console.print(line, highlight=False)) as plane:
        console.print(f"Gateway for [bold]{', '.join(names)}[/] at [bold]{plane.url}/v1[/]. Ctrl-C stops the gateway; the "
                      "servers behind it keep serving (`fledge fleet stop` stops them).", highlight=False)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            console.print("Stopping the gateway (the servers keep serving; `fledge fleet stop` stops them)...")


@app.command()
@friendly
def traffic(
    name: str = typer.Argument(..., help="Public model name the gateway serves."),
    users: int = typer.Option(2, "--users", help="Concurrent synthetic users."),
    seconds: float = typer.Option(0, "--seconds", help="Stop after this long (0: until Ctrl-C)."),
    url: Optional[str] = typer.Option(None, "--url", help="Gateway URL (default: the one `fledge gateway` recorded)."),
) -> None:
    """Send synthetic users' streamed completions through the gateway: canaries and the
    post-promotion watch judge live traffic, and without any they roll back for lack of data.
    A third of the requests carry a conversation history longer than any evaluation prompt.

    Example: `fledge traffic tiny-llama --users 2`
    """
    from fledge.devtools.traffic import SyntheticUsers
    from fledge.services.plane import connect_plane

    url = connect_plane(FledgeHome.from_env().ensure(), name, url).url
    generator = SyntheticUsers(url, name, users=users).start()
    console.print(f"{users} synthetic users sending to {url}/v1 as '{name}'; Ctrl-C stops them.", highlight=False)
    try:
        end = time.monotonic() + seconds if seconds else float("inf")
        while time.monotonic() < end:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    console.print(generator.stop().as_text(), highlight=False)


@app.command()
@friendly
def routes(
    name: Optional[str] = typer.Argument(None, help="Only this model (default: every model the gateway serves)."),
    url: Optional[str] = typer.Option(None, "--url", help="Gateway URL (default: the one `fledge gateway` recorded)."),
) -> None:
    """Show each model's split and live per-version figures (last 60 s).

    Example: `fledge routes`
    """
    from fledge.services.plane import connect_plane
    from fledge.services.rollout import live_figures

    admin = connect_plane(FledgeHome.from_env().ensure(), name, url=url).admin
    tables = {k: t for k, t in admin.tables().items() if name in (None, k)}
    if not tables:
        console.print(f"The gateway has no routes{' for ' + name if name else ''} yet.")
        return
    figures, in_flight = live_figures(admin), admin.in_flight()

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    for table in tables.values():
        out = Table(title=f"{table.model} via {admin.url}")
        for column in ("version", "role", "weight", "draining", "in flight", "req/60s", "errors", "TTFT p50", "TPOT p50"):
            out.add_column(column, no_wrap=True)
        for backend in table.backends.values():
            f = figures.get(backend.version)
            out.add_row(backend.version, backend.role, f"{backend.weight} %", "yes" if backend.draining else "no",
                        str(in_flight.get(backend.version, 0)), str(f.requests if f else 0),
                        f"{f.error_rate:.1%}" if f else "-", ms(f.ms("ttft_s", 50) if f else None),
                        ms(f.ms("per_token_latency_s", 50) if f else None))
        console.print(out)


@app.command()
@friendly
def canary(
    ref: str = typer.Argument(..., help="The version to roll out: NAME/VERSION or NAME@ALIAS."),
    url: Optional[str] = typer.Option(None, "--url", help="Gateway URL (default: the one `fledge gateway` recorded)."),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="Release policy YAML (canary steps, bake, limits)."),
) -> None:
    """Roll a version out by hand, without the release's offline gates: serve it and hand its
    canary, promotion (the registry's champion moves to it) and post-promotion watch to the
    serving plane's rollout controller, as a release does, then follow the rollout. Ctrl-C
    aborts it (all traffic back on stable, the aliases as before); closing the terminal
    leaves it running (`fledge rollout show|abort NAME`). The version's server outlives this
    command. Holds the model's lease while it follows the rollout.

    Exits 0 when promoted, 1 when rolled back or aborted.

    Example: `fledge canary tiny-llama/4`
    """
    import getpass

    from fledge.core.policy import load_policy
    from fledge.services.leases import holder_name, holding
    from fledge.services.manual_rollout import submit_manual_rollout
    from fledge.services.plane import connect_plane

    home = FledgeHome.from_env().ensure()
    policy, registry = load_policy(policy_file), open_registry(home)
    version = registry.resolve(ref)
    model, by = version.name, f"{getpass.getuser()} (fledge canary)"
    with holding(connect_plane(home, model, url=url).admin, model, "canary", holder_name("fledge canary")):
        plane = connect_plane(home, model, url=url)  # its changes fenced by the lease now held
        rollout = submit_manual_rollout(registry, plane, policy, version, by)
        console.print(f"Rollout {rollout.id} of {version.ref} submitted to the plane's controller: {rollout.describe()}",
                      highlight=False)
        said = None
        try:
            while (view := plane.admin.rollout(model)) is not None and view["end"] is None:
                if view["progress"] != said:
                    said = view["progress"]
                    console.print(f"Rollout: {said}", highlight=False)
                time.sleep(policy.canary.analysis_interval_seconds)
        except KeyboardInterrupt:
            console.print("Aborting the rollout: all traffic back on stable...")
            plane.admin.command_rollout(model, "abort", by)
            while (view := plane.admin.rollout(model)) is not None and view["end"] is None:
                time.sleep(0.5)
    if view is None or view["end"] != "promoted":
        console.print(f"[red]Not promoted[/]: {view['description'] if view else 'the rollout is gone'}", highlight=False)
        raise typer.Exit(1)
    console.print(f"[green]Promoted[/] {version.ref}: {view['description']}", highlight=False)


def _print_release(summary) -> None:
    colour = {"promoted": "green", "rejected": "yellow", "rolled_back": "yellow", "failed": "red"}[summary.outcome.value]
    console.print(f"[{colour}]{summary.outcome.value.upper()}[/] {summary.candidate} (champion before: "
                  f"{summary.champion_before}) at {summary.stage}: {summary.reason}", highlight=False)
    console.print(f"MLflow run {summary.mlflow_run_id}; Prefect flow run {summary.flow_run_id}; "
                  f"{summary.seconds:.0f} s", highlight=False)


def _parse_overrides(pairs: list[str]) -> dict:
    import yaml

    overrides = {}
    for pair in pairs:
        field, sep, value = pair.partition("=")
        if not sep or not field.strip():
            raise UsageError(f"--override {pair!r} is not FIELD=VALUE, e.g. --override canary.bake_seconds=120.")
        overrides[field.strip()] = yaml.safe_load(value)
    return overrides


@app.command()
@friendly(exit_code=2)
def release(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Option("challenger", "--version", help="Version number or alias to release."),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="Release policy YAML (default policies/default.yaml)."),
    override: list[str] = typer.Option([], "--override", metavar="FIELD=VALUE",
                                       help="Set a policy field for this run, e.g. canary.bake_seconds=120 (a YAML value); "
                                            "weakening one is refused unless the policy's overrides_allowed lists it."),
    auto_approve: bool = typer.Option(False, "--auto-approve", help="Approve without asking, where the policy's approval.allow_auto_approve permits it."),
    key: Optional[Path] = typer.Option(None, "--key", help="Your private key file: signs the request, so the release knows who asked."),
) -> None:
    """Release a candidate version through every gate to production, as a Prefect flow run:
    verify, quantize, evaluate against the champion, approve, canary through the running
    gateway (`fledge gateway NAME`), promote, watch. Anything short of a clean run puts the
    registry and the traffic back as they were.

    Exits 0 when promoted, 1 when rejected or rolled back, 2 when it could not start or failed.

    Example: `fledge release tiny-llama --version 3`
    """
    from fledge.core.overrides import apply_overrides, check_run_policy
    from fledge.core.policy import load_policy
    from fledge.services.context import Workspace
    from fledge.services.releases import preflight
    from flows.release import release as release_flow

    policy = load_policy(policy_file)
    overrides = _parse_overrides(override)
    check_run_policy(policy, apply_overrides(policy, overrides), auto_approve)  # refused here as one paragraph
    preflight(name, version, policy, auto_approve, Workspace.open())
    credential = _signed_request(name, version, key) if key else None
    summary = release_flow(name, version, policy, overrides, auto_approve, credential)
    _print_release(summary)
    raise typer.Exit(0 if summary.outcome.value == "promoted" else 1)


@app.command()
@friendly
def rollback(
    name: str = typer.Argument(..., help="Registered model name."),
    reason: str = typer.Option("", "--reason", help="Why: recorded on the versions and in MLflow."),
) -> None:
    """Put NAME@previous back as champion and send all traffic to it (serving it first if it
    is not running), as a Prefect flow run.

    A rollout of NAME in progress is aborted first, straight through the serving plane's
    admin API: its users are back on stable within seconds, before the flow run starts.

    Example: `fledge rollback tiny-llama --reason "complaints about answers"`
    """
    import getpass

    from fledge.services.plane_record import abort_running_rollout

    aborted = abort_running_rollout(FledgeHome.from_env().ensure(), name,
                                    f"the rollback asked by {getpass.getuser()}" + (f": {reason}" if reason else ""))
    if aborted is not None:
        console.print(f"Rollout of {aborted['spec']['canary']}: {aborted['description']}", highlight=False)

    from fledge.services.releases import rollback_target
    from flows.rollback import rollback as rollback_flow

    rollback_target(open_registry(), name)  # refused here in one paragraph, before any flow run
    change = rollback_flow(name, reason=reason)
    console.print(f"[green]Rolled back[/] {name}: champion {change.champion_before} -> {change.champion_after} "
                  f"(MLflow run {change.mlflow_run_id})", highlight=False)


@app.command()
@friendly
def promote(
    ref: str = typer.Argument(..., help="NAME/VERSION with a passing evaluation."),
    reason: str = typer.Option("", "--reason", help="Why: recorded on the versions and in MLflow."),
) -> None:
    """Make an evaluated version the champion at once (no canary), as a Prefect flow run.

    Example: `fledge promote tiny-llama/3 --reason "approved after the weekend"`
    """
    from fledge.services.releases import promote_target
    from flows.rollback import promote as promote_flow
    from registry.refs import parse_ref

    parsed = parse_ref(ref)
    if parsed.version is None:
        raise UsageError(f"Give a version number: NAME/VERSION, e.g. {parsed.name}/3.")
    promote_target(open_registry(), parsed.name, parsed.version, allow_unevaluated=False)
    change = promote_flow(parsed.name, parsed.version, reason=reason)
    console.print(f"[green]Promoted[/] {change.champion_after} (was {change.champion_before})", highlight=False)


@fleet_app.command("list")
@friendly
def fleet_list() -> None:
    """Every recorded vLLM server of this home, and how long its lease has left."""
    from fledge.services.plane import fleet_for

    home = FledgeHome.from_env().ensure()
    table = Table(title="vLLM servers")
    for column in ("instance", "url", "pid", "up", "lease left"):
        table.add_column(column)
    now = time.monotonic()
    for record in fleet_for(home).records().values():
        lease = f"{record.lease_expires - now:.0f} s" if record.lease_expires is not None else "-"
        table.add_row(record.key, record.base_url, str(record.pid), f"{time.time() - record.started_at:.0f} s", lease)
    console.print(table)


@fleet_app.command("stop")
@friendly
def fleet_stop() -> None:
    """Stop every vLLM server of this home (adapters first). A gateway still running keeps its
    routes and answers 502/503 until `fledge gateway` is started again.

    Example: `fledge fleet stop`
    """
    from fledge.services.plane import stop_serving

    stopped = stop_serving(FledgeHome.from_env().ensure())
    console.print(f"Stopped {len(stopped)} server(s){': ' + ', '.join(stopped) if stopped else ''}", highlight=False)


@lease_app.command("show")
@friendly
def lease_show(name: Optional[str] = typer.Argument(None, help="Only this model.")) -> None:
    """The leases the serving plane holds: model, holder, purpose, since."""
    from fledge.services.plane import connect_plane

    home = FledgeHome.from_env().ensure()
    table = Table(title="Leases")
    for column in ("model", "holder", "purpose", "since", "lease"):
        table.add_column(column)
    for model, lease in connect_plane(home, name).admin.leases().items():
        if name in (None, model):
            table.add_row(model, lease.holder, lease.purpose, time.strftime("%H:%M:%S", time.localtime(lease.since)),
                          str(lease.token))
    console.print(table)


@lease_app.command("break")
@friendly
def lease_break(name: str = typer.Argument(..., help="The model whose lease to break.")) -> None:
    """End the lease on NAME whoever holds it (its holder is gone, or must be stopped): the
    holder's later changes are refused. The break is in the gateway's audit log.

    Example: `fledge lease break tiny-llama`
    """
    import getpass

    from fledge.services.plane import connect_plane

    home = FledgeHome.from_env().ensure()
    broken = connect_plane(home, name).admin.break_lease(name, f"{getpass.getuser()} (fledge lease break)")
    console.print(f"Broke lease {broken.token} of {broken.holder} ({broken.purpose})" if broken
                  else f"Nobody held {name}", highlight=False)


def _rollout_command(name: str, command: str, comment: str | None = None) -> None:
    import getpass

    from fledge.services.plane import connect_plane

    home = FledgeHome.from_env().ensure()
    admin = connect_plane(home, name).admin
    if admin.rollout(name) is None:
        raise UsageError(f"No rollout of {name} is on record: `fledge release {name}` starts one.")
    view = admin.command_rollout(name, command, f"{getpass.getuser()} (fledge rollout {command})", comment)
    console.print(f"Rollout of {view['spec']['canary']}: {view['description']}", highlight=False)


@rollout_app.command("show")
@friendly
def rollout_show(name: str = typer.Argument(..., help="Registered model name.")) -> None:
    """The model's rollout: stage, canary step, who owns it and who submitted it."""
    from fledge.services.plane import connect_plane

    view = connect_plane(FledgeHome.from_env().ensure(), name).admin.rollout(name)
    if view is None:
        raise UsageError(f"No rollout of {name} is on record.")
    console.print(f"Rollout {view['id']} of {view['spec']['canary']} against {view['spec']['stable']}: "
                  f"{view['description']}", highlight=False)


@rollout_app.command("pause")
@friendly
def rollout_pause(name: str = typer.Argument(..., help="Registered model name.")) -> None:
    """Hold the canary at its current step: nothing is decided until `fledge rollout resume`,
    and the step then bakes again from the start.

    Example: `fledge rollout pause tiny-llama`
    """
    _rollout_command(name, "pause")


@rollout_app.command("resume")
@friendly
def rollout_resume(name: str = typer.Argument(..., help="Registered model name.")) -> None:
    """Go on with a paused rollout."""
    _rollout_command(name, "resume")


@rollout_app.command("abort")
@friendly
def rollout_abort(name: str = typer.Argument(..., help="Registered model name.")) -> None:
    """All traffic back on the stable version and the registry aliases as before the rollout,
    whatever its analysis says and whoever holds the model.

    Example: `fledge rollout abort tiny-llama`
    """
    _rollout_command(name, "abort")


@rollout_app.command("approve")
@friendly
def rollout_approve(name: str = typer.Argument(..., help="Registered model name."),
                    comment: str = typer.Option("", "--comment", help="Why, recorded on the rollout.")) -> None:
    """Answer the shadow step's question (a discordance without a guard's label): the candidate's
    answers are fine (e.g. it stopped over-refusing look-alikes); the other checks still decide.

    Example: `fledge rollout approve tiny-llama --comment "look-alikes no longer refused"`
    """
    _rollout_command(name, "approve", comment or None)


@rollout_app.command("reject")
@friendly
def rollout_reject(name: str = typer.Argument(..., help="Registered model name."),
                   comment: str = typer.Option("", "--comment", help="Why, recorded on the rollout.")) -> None:
    """Answer the shadow step's question: the discordance is a regression; the rollout rolls back.

    Example: `fledge rollout reject tiny-llama --comment "complies with harmful requests"`
    """
    _rollout_command(name, "reject", comment or None)


@app.command()
@friendly
def status(name: str = typer.Argument(..., help="Registered model name.")) -> None:
    """Aliases, running servers, the traffic split and the last releases of NAME.

    Example: `fledge status tiny-llama`
    """
    from fledge.core.tags import TAG_RELEASE_OUTCOME
    from fledge.services.plane import PlaneNotRunning, connect_plane, fleet_for
    from fledge.services.releases import last_releases, load_record

    home = FledgeHome.from_env().ensure()
    store = open_registry(home)
    table = Table(title=f"{name}: versions with an alias or a release")
    for column in ("version", "aliases", "status", "release outcome"):
        table.add_column(column)
    for info in store.versions(name):
        if info.aliases or TAG_RELEASE_OUTCOME in info.tags:
            table.add_row(info.version, ", ".join(info.aliases) or "-", info.status or "-",
                          info.tags.get(TAG_RELEASE_OUTCOME, "-"))
    console.print(table)
    instances = Table(title="vLLM servers")
    for column in ("instance", "url", "pid", "up"):
        instances.add_column(column)
    for record in fleet_for(home).records().values():
        if record.served_model_name.startswith(name + "/"):
            instances.add_row(record.key, record.base_url, str(record.pid), f"{time.time() - record.started_at:.0f} s")
    console.print(instances)
    try:
        plane = connect_plane(home, name)
        routes = plane.routes()
        split = ", ".join(f"{b.version} {b.weight} % ({b.role}{', draining' if b.draining else ''})"
                          for b in routes.backends.values()) if routes else "no routes"
        console.print(f"Traffic: {split}", highlight=False)
        lease = plane.admin.leases().get(name)
        console.print(f"Lease: {lease.holder} ({lease.purpose}, lease {lease.token})" if lease else "Lease: nobody holds it",
                      highlight=False)
        rollout = plane.admin.rollout(name)
        if rollout is not None:
            console.print(f"Rollout of {rollout['spec']['canary']}: {rollout['description']}", highlight=False)
    except PlaneNotRunning:
        console.print("Traffic: no gateway is running (start one with `fledge gateway NAME`)")
    in_progress = load_record(home, name)
    if in_progress:
        console.print(f"[yellow]Release in progress[/]: {in_progress.requested} (flow runs {', '.join(in_progress.flow_run_ids)})",
                      highlight=False)
    history = Table(title="Last releases")
    for column in ("started", "candidate", "champion then", "outcome", "reason"):
        history.add_column(column)
    for row in last_releases(store.runs, name):
        history.add_row(row["started"], row["candidate"], row["champion"], row["outcome"], row["reason"][:90])
    console.print(history)


@app.command()
@friendly
def deploy(
    serve_here: bool = typer.Option(False, "--serve", help="Serve the deployments from this process (until Ctrl-C)."),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="Policy the deployments use (and its cron)."),
) -> None:
    """Create the Prefect deployments: release, release-watch (on the policy's cron),
    rollback, promote, and the GPU steps. Without --serve they are registered on work pools
    `cpu` and `gpu` for `prefect worker start --pool cpu` to run.

    Example: `fledge deploy --serve`
    """
    from fledge.core.policy import load_policy
    from flows.deployments import deploy_to_pools, serve_all

    policy = load_policy(policy_file)
    policy_name = policy_file.stem if policy_file else "default"
    console.print(f"Policy {policy_name} ({policy.content_hash}) is pinned in the deployments' parameters", highlight=False)
    if serve_here:
        serve_all(policy, policy_name)
        return
    for full_name in deploy_to_pools(policy, policy_name):
        console.print(f"deployed {full_name}")
    console.print("Start a worker: `prefect worker start --pool cpu` (and `--pool gpu` on a GPU host, with "
                  "FLEDGE_GPU_WORK_POOL=gpu set for the release runs).")


@app.command()
@friendly
def demo(
    name: str = typer.Option("tiny-llama", "--name", help="Registered model name for the demo."),
    policy_file: Optional[Path] = typer.Option(None, "--policy", help="Release policy YAML (default policies/demo.yaml)."),
) -> None:
    """The main job on the embedded defaults: build the zoo, register base as champion, run
    the gateway with synthetic users, and release improved (promoted), unsafe (rejected at the
    safety gate), short-context and benchmark-tuned (both rolled back in the shadow step, before
    any user got one of their answers) through the release flow, then an adapter on base.

    Example: `fledge demo`
    """
    from fledge.devtools.demo import run_demo

    run_demo(name, console, policy_file)


def _signed_request(name: str, version: str, key_file: Path) -> str:
    from fledge.core.credentials import load_private_key, sign_request
    from fledge.services.context import open_registry
    from registry.refs import parse_ref

    ref = f"{name}/{version}" if version.isdigit() else f"{name}@{version}"
    resolved = open_registry().resolve(parse_ref(ref)).version
    return sign_request(load_private_key(key_file), key_file.stem, name, resolved).encode()


@keys_app.command("new")
@friendly
def keys_new(
    name: str = typer.Argument(..., help="Your name, as the policy will list you."),
    directory: Path = typer.Option(Path("~/.fledge/keys"), "--dir", help="Where the private key file goes (mode 0600)."),
) -> None:
    """Make a personal Ed25519 key: the private half stays in DIR/NAME.key; the printed entry
    goes in the policy's approval.people.

    Example: `fledge keys new alice`
    """
    from fledge.core.credentials import new_private_key, private_key_pem, public_key_text
    from fledge.core.state import write_atomic

    path = directory.expanduser() / f"{name}.key"
    if path.exists():
        raise UsageError(f"{path} exists already; a new key would lock you out of the policies that list the old one.")
    key = new_private_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, private_key_pem(key), mode=0o600)
    console.print(f"Private key: {path}\nAdd to the policy's approval.people:\n"
                  f"  - name: {name}\n    public_key: {public_key_text(key)}", highlight=False)


@keys_app.command("sign-approval")
@friendly
def keys_sign_approval(
    flow_run_id: str = typer.Argument(..., help="The paused release's flow run id (in the form's description)."),
    question: str = typer.Argument(..., help="The question, e.g. approval (in the form's description)."),
    report_digest: str = typer.Argument(..., help="The report's SHA-256 (in the form's description)."),
    approve: bool = typer.Option(..., "--approve/--reject", help="Your answer: the signature covers it."),
    key: Path = typer.Option(Path("~/.fledge/keys/{user}.key"), "--key", help="Your private key file."),
) -> None:
    """Print the credential for an answer in the approval form: a signature of this run, this
    question, this report and this answer, useless for any other.

    Example: `fledge keys sign-approval 0f3c... approval 9ab2... --approve --key ~/.fledge/keys/alice.key`
    """
    import getpass

    from fledge.core.credentials import approval_message, load_private_key, sign

    path = Path(str(key).replace("{user}", getpass.getuser())).expanduser()
    console.print(sign(load_private_key(path), approval_message(flow_run_id, question, report_digest, approve)),
                  highlight=False, soft_wrap=True)


@keys_app.command("sign-request")
@friendly
def keys_sign_request(
    name: str = typer.Argument(..., help="Registered model name."),
    version: str = typer.Argument(..., help="The version number to release."),
    key: Path = typer.Option(Path("~/.fledge/keys/{user}.key"), "--key", help="Your private key file (NAME.key)."),
) -> None:
    """Print a requester credential for a release of NAME/VERSION: the `requester_credential`
    parameter of a `release` run started in the Prefect UI. Valid once, for a short while.

    Example: `fledge keys sign-request tiny-llama 3 --key ~/.fledge/keys/alice.key`
    """
    import getpass

    path = Path(str(key).replace("{user}", getpass.getuser())).expanduser()
    console.print(_signed_request(name, version, path), highlight=False, soft_wrap=True)


@stack_app.command("up")
@friendly
def stack_up(
    serve: Optional[list[str]] = typer.Option(None, "--serve", help="A model whose champion the serving plane "
                                              "serves (repeat for more); remembered for later `up`s."),
    plane_policy: Optional[Path] = typer.Option(None, "--plane-policy", help="Policy YAML of the plane's serving "
                                                "settings (default policies/default.yaml)."),
) -> None:
    """Bring the team stack up from nothing, or start what is not running healthy (idempotent).
    With --serve, the serving plane too (its models' champions registered in the stack's MLflow).

    Example: `fledge stack up && source .fledge/stack/env`, later `fledge stack up --serve tiny-llama`
    """
    import subprocess

    from fledge.stack import up

    subprocess.run(["bash", str(Path(__file__).resolve().parents[2] / "scripts" / "stack-setup.sh")], check=True)
    up(FledgeHome.from_env(), serve=serve, plane_policy=plane_policy)


@stack_app.command("status")
@friendly
def stack_status() -> None:
    """Each component of the team stack: pid, port, healthy or not (exit 1 if one is not)."""
    from fledge.stack import status

    if not all(row.healthy for row in status(FledgeHome.from_env())):
        raise typer.Exit(1)


@stack_app.command("down")
@friendly
def stack_down(purge: bool = typer.Option(False, "--purge", help="Remove the stack's data too.")) -> None:
    """Stop everything `fledge stack up` started (the serving fleet through its own stop), and nothing else."""
    from fledge.stack import down

    down(FledgeHome.from_env(), purge=purge)


def main() -> None:  # pragma: no cover - console-script entry
    app()


if __name__ == "__main__":  # `python -m fledge.cli.main`, as the Makefile runs it
    main()
