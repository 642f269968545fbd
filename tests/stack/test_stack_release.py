"""Fledge as a team runs it, on the session's team stack (PostgreSQL, MLflow server, Prefect
server, the `cpu` and `gpu` process workers, Prometheus) with users on its serving plane, which
the stack starts (`up --serve`) once the champion is registered:

1. a run of the `release` deployment created through the Prefect API as the UI's Run button
   creates it, requested by bob's signed credential, is picked up by the `cpu` worker; its
   evaluations are dispatched to the `gpu` pool and run by the `gpu` worker (its own home: its
   servers stop when the step ends), their results handed back through the MLflow server; at
   the approval, a forged answer (a listed name, no credential) is not counted and the timeout
   rejects the release;
2. the same version released again: bob's own signed approval is not counted (four_eyes: he
   asked for it), alice approves in Chromium (the Prefect UI's form, read and filled as a
   person does), the canary runs, the release ends `Promoted`;
3. a run whose parameters weaken the deployed policy is refused before any work;
4. a `rollback` deployment run: the rollback notification reaches a webhook receiver;
5. the `release-watch` deployment's schedule (a 20 s interval here) fires by itself and releases
   a newly registered challenger, which the safety gate rejects.

Test 2 also draws the canary's timeline from the stack's Prometheus (docs/images).

The stack is torn down by tests/stack/test_teardown.py, which checks that no process is left.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fledge.core.credentials import approval_message, sign
from fledge.core.policy import DEFAULT_POLICY_PATH, load_policy
from registry.refs import CHALLENGER, CHAMPION, PREVIOUS
from support.browser import answer_in_browser, screenshot_page
from support.keys import key, people, request_credential, signed_answer
from support.receiver import WebhookReceiver

pytestmark = [pytest.mark.stack, pytest.mark.zoo, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
MODEL = "team-llama"
SCREENSHOTS = Path(os.environ.get("FLEDGE_SCREENSHOTS", "/tmp/fledge-screenshots"))


def stack_env(stack) -> dict[str, str]:
    """What `source FLEDGE_HOME/stack/env` exports."""
    from fledge.stack import envfile

    return envfile.read(stack.layout.env_file)


def write_team_policy(path: Path, receiver_url: str) -> Path:
    data = yaml.safe_load(DEFAULT_POLICY_PATH.with_name("demo.yaml").read_text())
    data["performance"]["tolerated_slowdown"] = 0.5  # about the stack's mechanics, not the gate's calibration
    data["canary"].update(steps=[50, 100], bake_seconds=10, analysis_interval_seconds=1, min_samples=10)
    data["watch"].update(window_seconds=8, min_samples=8)
    data["shadow"]["enabled"] = False  # the shadow step is tested in tests/e2e; here, the team's plumbing
    data["approval"] = {"required": True, "people": people("alice", "bob"), "approvers": [], "four_eyes": True,
                        "timeout_seconds": 600}
    data["notifications"] = {"urls": [receiver_url], "outcomes": ["promoted", "rejected", "rolled_back", "failed"]}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


class MemoryPeak:
    """The machine's memory in use (total - available), sampled every second: an upper bound on
    the stack's (it counts pytest and anything else running too)."""

    def __init__(self):
        import threading

        self.peak_gib, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        import psutil

        while not self._stop.wait(1.0):
            memory = psutil.virtual_memory()
            self.peak_gib = max(self.peak_gib, (memory.total - memory.available) / 2**30)

    def start(self) -> "MemoryPeak":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def write_figures(team, memory: MemoryPeak) -> None:
    """The stack's figures for the README: memory peak, each release's wall time and stages."""
    import json

    releases = []
    for run in team.registry.runs.search("fledge-releases", f"tags.`fledge.model` = '{MODEL}'", max_results=20):
        try:
            summary = json.loads(team.registry.runs.artifact_text(run.run_id, "release.json"))
        except Exception:  # a release refused before its summary, or a rollback
            continue
        releases.append({k: summary.get(k) for k in ("candidate", "outcome", "seconds", "stage_seconds")})
    figures = {"cold_up_s": team.stack.cold_up_s, "plane_up_s": team.stack.plane_up_s,
               "memory_peak_gib": round(memory.peak_gib, 2), "releases": releases,
               "flow_runs": prefect_timings()}
    Path(os.environ.get("FLEDGE_STACK_FIGURES", "/tmp/fledge-stack-figures.json")).write_text(json.dumps(figures, indent=2))


def prefect_timings() -> list[dict]:
    """Each release and GPU-step flow run as Prefect recorded it: the wait from its creation to
    its start (a worker polling, a process starting) and its run time."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[
            "release", "evaluate-suites", "quantize-version"])))
    return [{"name": r.name, "state": r.state.name if r.state else None, "pool": r.work_pool_name,
             "queued_s": round((r.start_time - r.created).total_seconds(), 2) if r.start_time else None,
             "run_s": round((r.end_time - r.start_time).total_seconds(), 2) if r.end_time and r.start_time else None}
            for r in sorted(runs, key=lambda r: r.created)]


class Team:
    def __init__(self, stack, env, policy_path, registry, versions, plane, receiver, users):
        self.stack, self.env, self.policy_path, self.registry = stack, env, policy_path, registry
        self.versions, self.plane, self.receiver, self.users = versions, plane, receiver, users
        self.api = env["PREFECT_API_URL"]
        self.ui = self.api.removesuffix("/api")

    def ref(self, variant: str) -> str:
        return f"{MODEL}/{self.versions[variant]}"

    def run(self, deployment: str, parameters: dict) -> str:
        """A flow run of DEPLOYMENT as the UI's Run button creates it (POST create_flow_run)."""
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            found = client.read_deployment_by_name(deployment)
            return str(client.create_flow_run_from_deployment(found.id, parameters=parameters).id)

    def flow_run(self, run_id: str):
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return client.read_flow_run(run_id)

    def wait(self, run_id: str, until, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.flow_run(run_id)
            if run.state and until(run.state):
                return run
            if run.state and run.state.is_final():
                break
            time.sleep(1)
        raise AssertionError(f"flow run {run_id} did not reach {what}: {run.state.name if run.state else None} "
                             f"{run.state.message if run.state else ''}\n{self.worker_logs()}")

    def worker_logs(self) -> str:
        logs = self.stack.layout.home.logs / "stack"
        return "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(logs.glob("worker-*.log")))


@pytest.fixture(scope="module")
def team(stack, zoo, tmp_path_factory):
    from fledge.services.context import open_registry
    from fledge.core.home import FledgeHome
    from fledge.devtools.traffic import SyntheticUsers
    from flows.deployments import deploy_to_pools

    env = stack_env(stack)
    receiver = WebhookReceiver()
    policy_path = write_team_policy(tmp_path_factory.mktemp("team") / "team.yaml", receiver.url)
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Prefect reads its settings once, at import: the stack's API is set through its settings
    # context (an environment variable set now would leave this process on a temporary server).
    with pytest.MonkeyPatch.context() as patch, temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "FLEDGE_HOME"):
            patch.setenv(name, env[name])
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        home = FledgeHome(Path(env["FLEDGE_HOME"]))
        registry = open_registry(home)
        versions = {}
        for variant in ("base", "improved"):
            info, _ = registry.register_once(zoo[variant].path, MODEL, alias=CHAMPION if variant == "base" else CHALLENGER)
            versions[variant] = info.version
        deploy_to_pools(load_policy(policy_path), "team", source=ROOT)
        # The serving plane, started by the stack once it has a champion to serve.
        began = time.monotonic()
        served = subprocess.run([sys.executable, "-m", "fledge.stack", "up", "--home", str(stack.home), "--serve", MODEL,
                                 "--plane-policy", str(policy_path)], capture_output=True, text=True, cwd=ROOT,
                                timeout=900)
        assert served.returncode == 0, served.stdout + served.stderr
        assert "plane       started" in served.stdout and "worker-cpu  running" in served.stdout, served.stdout
        stack.plane_up_s = time.monotonic() - began
        plane = stack.record().components["plane"].pid
        users = SyntheticUsers(env["FLEDGE_PLANE_URL"], MODEL, users=3).start()
        memory = MemoryPeak().start()
        team = Team(stack, env, policy_path, registry, versions, plane, receiver, users)
        try:
            yield team
        finally:
            memory.stop()
            write_figures(team, memory)
            users.stop()
            receiver.close()
            # The stack's data goes with its teardown: its logs are kept for a failed run's reader.
            shutil.copytree(home.logs, Path(os.environ.get("FLEDGE_STACK_LOGS", "/tmp/fledge-stack-logs")),
                            dirs_exist_ok=True)


def test_1_a_ui_triggered_release_runs_on_the_workers_and_a_forged_answer_is_not_counted(team):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.flow_runs import resume_flow_run

    version = team.versions["improved"]
    run_id = team.run("release/release", {
        "model": MODEL, "candidate": version,
        "requester_credential": request_credential("bob", MODEL, version),
        "overrides": {"approval.timeout_seconds": 40}})  # a stronger-or-equal override: allowed
    run = team.wait(run_id, lambda s: s.is_paused(), 900, "the approval pause")
    assert run.name == f"release-{MODEL}-{version}" and run.work_pool_name == "cpu"
    # A listed name typed in the form, with no credential: logged, not counted; the run waits on.
    resume_flow_run(run_id, run_input={"approve": True, "approver": "alice", "comment": "forged"})
    run = team.wait(run_id, lambda s: s.is_final(), 300, "its end")
    assert run.state.name == "Rejected", f"{run.state.message}\n{team.worker_logs()}"
    assert "no answer within 40 s" in run.state.message

    with get_client(sync_client=True) as client:  # the evaluations ran on the gpu pool, as a sub-run
        evaluations = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["evaluate-suites"])))
    assert evaluations and all(e.work_pool_name == "gpu" and e.state.is_completed() for e in evaluations)
    # The gpu host's own home: its evaluation servers ran there and stopped with the step.
    from fledge.core.home import FledgeHome
    from fledge.services.plane import fleet_for

    gpu_home = FledgeHome(team.stack.layout.worker_dir("gpu") / ".fledge")
    assert len(gpu_home.files.instance_starts.read_text().splitlines()) >= 2  # candidate and champion
    assert fleet_for(gpu_home).records() == {}
    tags = team.registry.get_version(MODEL, version).tags
    assert tags["fledge.approval"] == "rejected" and tags["fledge.release.outcome"] == "rejected"
    release_run = team.registry.client.get_run(tags["fledge.release.run_id"])
    assert release_run.data.tags["fledge.release.requested_by"] == "bob (signed request)"
    assert team.receiver.wait_for(f"Release of {MODEL}/{version}: REJECTED")
    assert team.registry.aliases(MODEL)[CHAMPION] == team.versions["base"]


def test_2_alice_approves_in_chromium_and_the_release_is_promoted(team):
    from prefect.flow_runs import resume_flow_run

    version = team.versions["improved"]
    run_id = team.run("release/release", {"model": MODEL, "candidate": version,
                                           "requester_credential": request_credential("bob", MODEL, version)})
    team.wait(run_id, lambda s: s.is_paused(), 600, "the approval pause")
    # bob signs his own approval: valid, but four_eyes keeps the requester from approving.
    from prefect.client.orchestration import get_client

    from support.keys import paused_question

    with get_client(sync_client=True) as client:
        asked_run, question, digest = paused_question(client, run_id)
    resume_flow_run(run_id, run_input=signed_answer("bob", asked_run, question, digest, True, "mine"))
    time.sleep(3)
    team.wait(run_id, lambda s: s.is_paused(), 120, "the approval pause again")
    answered = answer_in_browser(
        team.ui, run_id, "alice", True, "numbers look good",
        sign=lambda run, q, d, approve: sign(key("alice"), approval_message(run, q, d, approve)),
        screenshot=SCREENSHOTS / "approval-form.png")
    assert answered.flow_run_id == run_id and answered.report_digest == digest
    run = team.wait(run_id, lambda s: s.is_final(), 900, "its end")
    assert run.state.name == "Promoted", f"{run.state.message}\n{team.worker_logs()}"
    assert team.registry.aliases(MODEL) == {CHAMPION: version, PREVIOUS: team.versions["base"]}
    tags = team.registry.get_version(MODEL, version).tags
    assert (tags["fledge.approval"], tags["fledge.approval.by"]) == ("approved", "alice")
    assert tags["fledge.approval.report_sha256"] == digest
    assert set(dict(p.split("=") for p in tags["fledge.approval.evaluation_runs"].split(","))) == {
        "safety", "quality", "performance"}
    team.receiver.wait_for(f"Release of {MODEL}/{version}: PROMOTED")
    screenshot_page(f"{team.ui}/runs/flow-run/{run_id}", SCREENSHOTS / "release-artifacts.png", tab="Artifacts",
                    wait_text="verdict")
    # The canary as the stack's Prometheus scraped it from the plane's gateway: the weights the
    # controller set (50 then 100) and the traffic each version served, pictured for the README.
    from serving.monitoring.timeline import canary_series, plot_canary_timeline

    series = canary_series(team.stack.url("prometheus"), MODEL, run.start_time.timestamp() - 30,
                           run.end_time.timestamp() + 10)
    candidate = f"{MODEL}/{version}"
    assert max(value for _, value in series["weight"][candidate]) == 100
    assert any(value == 50 for _, value in series["weight"][candidate])
    assert max(value for _, value in series["share"][candidate]) > 0.9
    plot_canary_timeline(series, MODEL, SCREENSHOTS / "canary-timeline.png",
                         events=[(answered.answered_at, "approved in the UI")])


def test_3_a_run_that_weakens_the_deployed_policy_is_refused_before_any_work(team):
    before = len(team.registry.runs.search("fledge-releases", f"tags.`fledge.model` = '{MODEL}'", max_results=50))
    run_id = team.run("release/release", {"model": MODEL, "candidate": team.versions["base"],
                                           "overrides": {"approval.required": False, "canary.steps": [100]}})
    run = team.wait(run_id, lambda s: s.is_final(), 300, "its end")
    assert run.state.is_failed()
    assert "weakens the deployed policy" in run.state.message and "approval.required True -> False" in run.state.message
    after = len(team.registry.runs.search("fledge-releases", f"tags.`fledge.model` = '{MODEL}'", max_results=50))
    assert after == before  # no release run was started


def test_4_a_rollback_from_its_deployment_notifies_the_webhook(team):
    run_id = team.run("rollback/rollback", {"model": MODEL, "reason": "stack test", "requested_by": "alice"})
    run = team.wait(run_id, lambda s: s.is_final(), 600, "its end")
    assert run.state.is_completed(), run.state.message
    notice = team.receiver.wait_for(f"Rollback of {MODEL}")
    assert "stack test" in notice["message"] and team.registry.aliases(MODEL)[CHAMPION] == team.versions["base"]


def test_5_the_release_watch_schedule_fires_by_itself_and_releases_a_new_challenger(team, zoo):
    """The deployment's schedule, on a short interval here (the policy's cron in production),
    starts release-watch runs on its own; one finds the newly registered challenger and starts
    its release, requested by the schedule (read from the Prefect API, not a parameter). The
    candidate is unsafe: the safety gate, evaluated on the gpu worker, rejects it."""
    from datetime import timedelta

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.schedules import IntervalSchedule

    info, _ = team.registry.register_once(zoo["unsafe"].path, MODEL, alias=CHALLENGER)
    with get_client(sync_client=True) as client:
        watch = client.read_deployment_by_name("release-watch/release-watch")
        created = client.create_deployment_schedules(watch.id, [(IntervalSchedule(interval=timedelta(seconds=20)), True)])
    try:
        deadline, release = time.monotonic() + 600, None
        while time.monotonic() < deadline and release is None:
            with get_client(sync_client=True) as client:
                runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["release"])))
            release = next((r for r in runs if r.name == f"release-{MODEL}-{info.version}"), None)
            time.sleep(2)
        assert release is not None, f"no release of {info.ref} was started by the schedule\n{team.worker_logs()}"
        run = team.wait(str(release.id), lambda s: s.is_final(), 900, "its end")
        assert run.state.name == "Rejected" and "safety" in run.state.message, run.state.message
        release_run = team.registry.client.get_run(team.registry.get_version(MODEL, info.version).tags["fledge.release.run_id"])
        assert release_run.data.tags["fledge.release.requested_by"] == "schedule of release-watch (schedule)"
    finally:
        with get_client(sync_client=True) as client:
            for schedule in created:
                client.delete_deployment_schedule(watch.id, schedule.id)
