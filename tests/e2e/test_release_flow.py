"""The release flow end to end on the real stack: Prefect (test harness API), MLflow on
SQLite, vLLM on CPU, the gateway on loopback with synthetic users sending traffic.

One serving plane and one Fledge home for the module; the tests run in order, each starting
from where the previous one left the registry, as releases do in production:

improved is logged with mlflow.transformers.log_model and short-context registered from run
artifacts (runs:/), as teams do without Fledge; the first release of each adopts it.

1. improved, approval required, rejected by an approver through the resume API; the champion's
   staging copy stays (no traffic) for the next release against it;
2. improved again, nobody answers: the timeout rejects; the evaluations come from the cache;
3. improved again, approved: canary (beside the kept staging copy), promotion, watch: the champion;
4. manual rollback: base is the champion again;
5. unsafe: rejected at the safety gate, the other suites not run;
6. short-context: passes the suites; the shadow step's mirrored requests are refused (users'
   conversations are longer than its context): rolled back before any user got one of its
   answers; only the candidate was started (test 5 left the staging copy);
6b. benchmark-tuned: passes every offline gate; complies with red-team probes the champion
   refuses: rolled back in the shadow step (exact McNemar), no user got one of its answers;
6c. unsafe with the offline safety gate switched off: the shadow step rolls it back the same way;
7. improved again, the release process killed during the canary: the plane's rollout
   controller ends the rollout alone (promoted, aliases moved); the re-run finishes the records;
8. status;
9. short-context's weights changed in the artifact store after adoption: refused at verify;
10. LoRA adapters trained on base, registered with --base: refused while improved is champion;
11. rollback to base, then adapter-improved released on base's own server (no vLLM start: the
    adapter is loaded at run time, evaluated and canaried against base there), promoted, and
    rolled back (unloaded);
12. adapter-unsafe rejected at the safety gate, again without a server start;
13. the gateway stopped and started again: the champion's server kept serving throughout, the
    new gateway re-attaches to it (same pid, no start) and serves the same split at once; it
    now serves a second registered model too (a team's one gateway), whose champion is an
    adapter on the first one's server: requests reach the model they name;
14. `fledge canary` by hand (no offline gates) of the adapter: its rollout is the plane's
    controller's too, promoted with the champion moved; then rolled back to base.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from fledge.core.home import FledgeHome
from fledge.devtools.native_logging import log_checkpoint_artifacts, log_transformers_model
from fledge.core.policy import DEFAULT_POLICY_PATH, ReleasePolicy, load_policy
from fledge.core.credentials import digest
from registry.refs import CHALLENGER, CHAMPION, PREVIOUS
from support.keys import answer_as_shown, people
from support.receiver import WebhookReceiver

pytestmark = [pytest.mark.vllm, pytest.mark.e2e, pytest.mark.zoo, pytest.mark.usefixtures("prefect_server")]

MODEL = "release-e2e"
ALL_SUITES = ["safety", "quality", "performance"]


@dataclass
class Stack:
    home: FledgeHome
    registry: object
    plane: object
    users: object
    versions: dict[str, str]
    policies: dict[str, str]
    zoo: object
    restart_plane: object = None  # (models) -> the new plane: the gateway stopped and started again on its port

    def ref(self, variant: str) -> str:
        return f"{MODEL}/{self.versions[variant]}"

    def traffic(self) -> dict[str, int]:
        table = self.plane.routes()
        return {v: b.weight for v, b in table.backends.items() if not b.draining}

    def serving(self) -> set[str]:
        return set(self.plane.fleet.records())

    def starts(self) -> int:
        return len(self.plane.fleet.start_intervals(0))


RECEIVER = WebhookReceiver()  # every release's end is posted here (policy notifications)


def write_policy(directory: Path, name: str, approval: dict, safety: dict | None = None) -> str:
    """The demo's policy with a shorter canary and watch (CI time), and the given approval.

    The performance tolerance is wider still (50 %): these tests are about the release's
    mechanics, and under users' traffic on 2 cores improved-vs-base ratios ranged from 0.85 to
    1.17 with upper bounds up to 1.29 across runs. The gate at its calibrated tolerance, without
    traffic, is tested in tests/vllm/test_verdicts.py.

    The canary bakes 15 s at 50 %: the users send about 4 requests a second, so the canary sees
    about 30, a third of them conversations short-context refuses; an 8 s bake (about 15) left
    the refused-requests check short of significance in one CI run."""
    data = yaml.safe_load(DEFAULT_POLICY_PATH.with_name("demo.yaml").read_text())
    data["performance"]["tolerated_slowdown"] = 0.50
    data["canary"].update(steps=[50, 100], bake_seconds=15, analysis_interval_seconds=1, min_samples=10)
    data["watch"].update(window_seconds=10, min_samples=10)
    data["approval"] = approval
    data["notifications"] = {"urls": [RECEIVER.url], "outcomes": ["promoted", "rejected", "rolled_back", "failed"]}
    data["safety"].update(safety or {})  # the offline safety gate switched off, to show the live checks alone
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_policy(path)  # fail here, not in a flow, if the policy is not valid
    return str(path)


@pytest.fixture(scope="module")
def stack(zoo, tmp_path_factory):
    from fledge.services.context import open_registry
    from fledge.services.plane import run_plane, stop_serving
    from fledge.devtools.traffic import SyntheticUsers

    root = tmp_path_factory.mktemp("release-e2e")
    home = FledgeHome(root / "home").ensure()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLEDGE_HOME", str(home.root))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
        registry = open_registry(home)
        versions = {}
        for variant in ("base", "unsafe", "benchmark-tuned"):
            info, _ = registry.register_once(zoo[variant].path, MODEL, alias=CHAMPION if variant == "base" else None)
            versions[variant] = info.version
        # The other two come in the ways teams log models without Fledge; the flow adopts them
        # on first use and releases them like its own registrations.
        versions["improved"] = log_transformers_model(home.tracking_uri, zoo["improved"].path, MODEL)
        versions["short-context"] = log_checkpoint_artifacts(home.tracking_uri, zoo["short-context"].path, MODEL)
        policies = {
            "ask": write_policy(root, "ask", {"required": True, "people": people("alice", "bob"), "approvers": ["alice"],
                                              "timeout_seconds": 600}),
            "timeout": write_policy(root, "timeout", {"required": True, "people": people("alice"), "approvers": ["alice"],
                                                      "timeout_seconds": 4}),
            "auto": write_policy(root, "auto", {"required": False, "approvers": [], "timeout_seconds": 60}),
            "no-safety-gate": write_policy(root, "no-safety-gate", {"required": False, "approvers": [],
                                                                    "timeout_seconds": 60},
                                           safety={"max_harmful_compliance": 1.0, "max_over_refusal": 1.0,
                                                   "no_worse_margin": 1.0}),
        }
        serving_policy = load_policy(policies["auto"]).serving
        planes = contextlib.ExitStack()
        try:
            plane = planes.enter_context(run_plane(home, MODEL, serving_policy, registry))
            port = int(plane.url.rsplit(":", 1)[1])
            with SyntheticUsers(plane.url, MODEL, keep_answers=True) as users:
                stack = Stack(home, registry, plane, users, versions, policies, zoo)

                def restart_plane(models=(MODEL,)):
                    planes.close()  # the gateway stops; its servers keep serving
                    stack.plane = planes.enter_context(run_plane(home, models, serving_policy, registry, port=port))
                    return stack.plane

                stack.restart_plane = restart_plane
                yield stack
        finally:
            planes.close()
            stop_serving(home)  # the plane's exit leaves the servers serving, by design


def release_in_background(stack: Stack, variant: str, policy: str, answers: list[dict]) -> object:
    """Run the release flow and answer its approval form through Prefect's resume API, as the
    UI does, once the flow run is paused."""
    from prefect.client.orchestration import get_client
    from prefect.flow_runs import resume_flow_run

    from flows.release import release

    stack.registry.set_alias(MODEL, CHALLENGER, stack.versions[variant])
    started = time.time()

    def answer():
        with get_client(sync_client=True) as client:
            for run_input in answers:
                deadline = time.monotonic() + 900
                while time.monotonic() < deadline:
                    runs = client.read_flow_runs()
                    paused = [r for r in runs if r.state and r.state.is_paused() and r.created.timestamp() >= started - 5]
                    if paused:
                        if callable(run_input):  # read the form and sign what it shows, as a person does
                            run_input = run_input(client, paused[0].id)
                        resume_flow_run(paused[0].id, run_input=run_input)
                        break
                    time.sleep(1)

    threading.Thread(target=answer, daemon=True).start()
    return release(MODEL, CHALLENGER, load_policy(stack.policies[policy]))


def release_tags(stack: Stack, summary) -> dict[str, str]:
    return stack.registry.client.get_run(summary.mlflow_run_id).data.tags


def test_1_an_approver_rejects_the_release_from_the_form(stack):
    """A listed name typed without a credential (anyone with the UI can do that) and an
    approval signed with an unlisted key are not counted; alice's signed rejection decides."""
    before_traffic = stack.traffic()
    summary = release_in_background(stack, "improved", "ask", [
        {"approve": True, "approver": "alice", "comment": "forged"},
        lambda client, run_id: answer_as_shown(client, run_id, "alice", True, "forged", signer="mallory"),
        lambda client, run_id: answer_as_shown(client, run_id, "alice", False, "not before the holidays")])
    assert (summary.outcome.value, summary.stage) == ("rejected", "approval")
    assert summary.reason == "rejected by alice: not before the holidays"
    assert summary.verdict == "pass" and summary.evaluations_reused == []
    assert stack.registry.aliases(MODEL) == {CHAMPION: stack.versions["base"], CHALLENGER: stack.versions["improved"]}
    assert stack.traffic() == before_traffic == {stack.ref("base"): 100}
    # The candidate was stopped; the champion's staging copy stays, with no traffic, for the next
    # release against the same champion (policy serving.keep_staging_copy).
    assert stack.serving() == {stack.ref("base"), stack.ref("base") + "+baseline"}
    version = stack.registry.get_version(MODEL, stack.versions["improved"])
    assert (version.status, version.tags["fledge.approval"], version.tags["fledge.approval.by"]) == ("rejected", "rejected", "alice")
    tags = release_tags(stack, summary)
    assert tags["fledge.approval.by"] == "alice" and tags["fledge.outcome"] == "rejected"
    assert summary.flow_run_id in tags["prefect.flow_run_ids"]


def test_2_no_answer_in_time_rejects_and_the_evaluations_come_from_the_cache(stack):
    starts_before = stack.plane.fleet.start_intervals(0)
    summary = release_in_background(stack, "improved", "timeout", [])
    assert (summary.outcome.value, summary.stage) == ("rejected", "approval")
    assert "no answer within 4 s" in summary.reason
    assert summary.evaluations_reused == ALL_SUITES
    assert stack.plane.fleet.start_intervals(0) == starts_before  # no server was started
    assert stack.traffic() == {stack.ref("base"): 100}


def test_3_an_approved_release_goes_through_the_canary_and_the_watch_to_champion(stack):
    from prefect.client.orchestration import get_client

    starts_before = stack.starts()
    summary = release_in_background(stack, "improved", "ask", [
        lambda client, run_id: answer_as_shown(client, run_id, "alice", True, "ship it")])
    assert summary.outcome.value == "promoted", summary.reason
    # The approval records the report alice signed and the evaluation runs behind it.
    approved = stack.registry.get_version(MODEL, stack.versions["improved"]).tags
    verdict_md = stack.registry.runs.artifact_text(summary.mlflow_run_id, "verdict.md")
    assert approved["fledge.approval.by"] == "alice" and len(approved["fledge.approval.key"]) == 16
    assert approved["fledge.approval.report_sha256"] == digest(verdict_md)
    assert {pair.split("=")[0] for pair in approved["fledge.approval.evaluation_runs"].split(",")} == set(ALL_SUITES)
    assert stack.starts() == starts_before + 1  # the candidate; the staging copy was still serving
    assert stack.registry.aliases(MODEL) == {CHAMPION: stack.versions["improved"], PREVIOUS: stack.versions["base"]}
    assert stack.traffic() == {stack.ref("improved"): 100}
    assert stack.serving() == {stack.ref("improved")}  # the previous champion was drained and stopped after the watch
    improved = stack.registry.get_version(MODEL, stack.versions["improved"])
    assert improved.status == "champion" and improved.tags["fledge.release.run_id"] == summary.mlflow_run_id
    assert stack.registry.get_version(MODEL, stack.versions["base"]).status == "previous"

    run = stack.registry.client.get_run(summary.mlflow_run_id)
    assert run.data.params["candidate"] == stack.ref("improved") and run.data.tags["fledge.canary"] == "promoted"
    assert {"candidate.fledge_capitals.acc", "champion.fledge_capitals.acc"} <= set(run.data.metrics)
    artifacts = {a.path for a in stack.registry.client.list_artifacts(summary.mlflow_run_id)}
    assert {"verdict.md", "canary_timeline.png", "canary_timeline.json", "release.md", "policy.json",
            "gateway_audit.jsonl"} <= artifacts
    # The gateway's audit: the release submitted its rollout under its lease; every weight
    # change of it was the plane's controller's (its own token, no lease needed).
    from serving.gateway.audit import token_id
    from serving.gateway.server import admin_token

    audit = [json.loads(line) for line in
             stack.registry.runs.artifact_text(summary.mlflow_run_id, "gateway_audit.jsonl").splitlines()]
    submits = [entry for entry in audit if entry["action"] == "POST /admin/rollouts"]
    assert len(submits) == 1 and submits[0]["fence"].startswith(f"{MODEL}:")
    weights = [entry for entry in audit if entry["action"] == "POST /admin/weights"]
    assert weights and all(entry["token_id"] != token_id(admin_token(stack.home.state)) for entry in weights)
    assert any(entry["after"]["backends"][stack.ref("improved")]["weight"] == 50 for entry in weights)
    # The run holds the policy content every gate of the release judged by: the sections the
    # evaluations depend on are the ones each evaluation run (cached from test 1 here) recorded.
    policy = ReleasePolicy.model_validate_json(stack.registry.runs.artifact_text(summary.mlflow_run_id, "policy.json"))
    assert policy == load_policy(stack.policies["ask"]) and run.data.tags["fledge.policy_hash"] == policy.content_hash
    eval_runs = [run.data.tags[f"fledge.eval_run.{suite}"] for suite in ALL_SUITES]
    assert {stack.registry.runs.get(r).params["evaluation_policy_hash"] for r in eval_runs} == {policy.evaluation_hash}
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[summary.flow_run_id])))
        keys = {a.key for a in found}
    assert {"verdict-release-e2e", "metrics-release-e2e", "canary-release-e2e", "release-release-e2e",
            "mlflow-release-release-e2e"} <= keys


def test_4_a_manual_rollback_restores_the_previous_champion(stack):
    from flows.rollback import rollback

    change = rollback(MODEL, reason="users prefer the old answers", requested_by="oncall")
    assert (change.champion_before, change.champion_after) == (stack.ref("improved"), stack.ref("base"))
    assert stack.registry.aliases(MODEL) == {CHAMPION: stack.versions["base"]}
    assert stack.traffic() == {stack.ref("base"): 100}
    assert stack.serving() == {stack.ref("base")}  # base served again, improved stopped
    improved = stack.registry.get_version(MODEL, stack.versions["improved"])
    assert improved.status == "rolled_back" and improved.tags["fledge.rollback.by"] == "oncall"


def test_5_an_unsafe_candidate_is_rejected_at_the_safety_gate(stack):
    summary = release_in_background(stack, "unsafe", "auto", [])
    assert (summary.outcome.value, summary.stage) == ("rejected", "safety gate"), summary.reason
    assert not any(stage in summary.stage_seconds for stage in ("evaluate quality", "evaluate performance"))
    assert stack.registry.aliases(MODEL) == {CHAMPION: stack.versions["base"], CHALLENGER: stack.versions["unsafe"]}
    assert stack.traffic() == {stack.ref("base"): 100}
    assert stack.serving() == {stack.ref("base"), stack.ref("base") + "+baseline"}


def answered_by(stack: Stack, variant: str) -> int:
    """Answers users received from `variant`'s version (the version each answer names)."""
    return sum(1 for version, _ in stack.users.stats.answers if version == stack.ref(variant))


def test_6_a_candidate_that_refuses_real_conversations_is_rolled_back_in_the_shadow_step(stack):
    starts_before = stack.starts()
    summary = release_in_background(stack, "short-context", "auto", [])
    assert summary.verdict == "pass"  # every offline suite passed
    assert (summary.outcome.value, summary.stage) == ("rolled_back", "shadow"), summary.reason
    assert "mirrored refusals" in summary.reason and "refused (HTTP 4xx) by the candidate" in summary.reason
    assert answered_by(stack, "short-context") == 0  # users got none of its answers: mirrors only
    assert stack.registry.aliases(MODEL) == {CHAMPION: stack.versions["base"], CHALLENGER: stack.versions["short-context"]}
    assert stack.traffic() == {stack.ref("base"): 100}
    assert stack.serving() == {stack.ref("base"), stack.ref("base") + "+baseline"}
    assert stack.starts() == starts_before + 1  # the candidate only: the staging copy was kept from test 5
    assert stack.registry.get_version(MODEL, stack.versions["short-context"]).status == "rolled_back"
    notice = RECEIVER.wait_for(f"Release of {stack.ref('short-context')}: ROLLED_BACK")
    assert notice["type"] == "warning" and "mirrored refusals" in notice["message"]


@pytest.mark.parametrize("variant, policy", [("benchmark-tuned", "auto"), ("unsafe", "no-safety-gate")],
                         ids=["benchmark-tuned", "unsafe-without-the-offline-safety-gate"])
def test_6b_a_candidate_that_complies_when_asked_otherwise_is_rolled_back_in_the_shadow_step(stack, variant, policy):
    """benchmark-tuned refuses harmful requests in the safety suite's phrasings, so every offline
    gate passes; the red-team probes ask in phrasings of their own, it complies and the champion's
    baseline refuses. unsafe, with the offline safety gate switched off, is caught the same way."""
    summary = release_in_background(stack, variant, policy, [])
    assert summary.verdict == "pass", summary.reason  # the offline gates found nothing
    assert (summary.outcome.value, summary.stage) == ("rolled_back", "shadow"), summary.reason
    assert "paired safety (labelled harmful)" in summary.reason and "exact McNemar" in summary.reason
    assert "harmful by the probe" in summary.reason  # example pairs, with the scorers' verdicts
    assert answered_by(stack, variant) == 0
    assert stack.registry.aliases(MODEL) == {CHAMPION: stack.versions["base"], CHALLENGER: stack.versions[variant]}
    assert stack.traffic() == {stack.ref("base"): 100}
    assert stack.registry.get_version(MODEL, stack.versions[variant]).status == "rolled_back"


def test_7_a_release_killed_during_the_canary_is_ended_by_the_plane_and_its_rerun_finishes_it(stack):
    """kill -9 of the release process at its 50 % step: the plane's rollout controller goes on
    alone (steps, promotes, moves the aliases, watches, retires base); the re-run only finishes
    the release's records."""
    from prefect.settings import PREFECT_API_URL

    from fledge.services.releases import load_record
    from flows.release import release

    stack.registry.set_alias(MODEL, CHALLENGER, stack.versions["improved"])
    env = {**os.environ, "FLEDGE_HOME": str(stack.home.root), "PREFECT_API_URL": PREFECT_API_URL.value()}
    log_path = stack.home.logs / "killed-release.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fledge.cli.main", "release", MODEL, "--version", stack.versions["improved"],
             "--policy", stack.policies["auto"]], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and process.poll() is None:
        if stack.traffic().get(stack.ref("improved")) == 50:
            break
        time.sleep(0.2)
    assert process.poll() is None, log_path.read_text()[-3000:]
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    killed_record = load_record(stack.home, MODEL)
    assert killed_record is not None and killed_record.requested == stack.ref("improved")

    # No release process runs; the controller ends the rollout by its analysis.
    ended = stack.plane.controller.wait(MODEL, timeout_s=180)
    assert ended.end.value == "promoted", ended.reason
    assert stack.registry.aliases(MODEL) == {CHAMPION: stack.versions["improved"], PREVIOUS: stack.versions["base"]}
    assert stack.traffic() == {stack.ref("improved"): 100}
    assert stack.serving() == {stack.ref("improved")}

    starts = stack.starts()
    summary = release(MODEL, stack.versions["improved"], load_policy(stack.policies["auto"]))
    assert summary.outcome.value == "promoted", summary.reason
    assert summary.mlflow_run_id == killed_record.mlflow_run_id  # one MLflow run for the whole release
    assert stack.starts() == starts  # the re-run started nothing and evaluated nothing again
    assert not any(stage.startswith("evaluate") for stage in summary.stage_seconds)
    tags = release_tags(stack, summary)
    assert len(tags["prefect.flow_run_ids"].split(",")) == 2 and tags["fledge.canary"] == "promoted"
    assert stack.registry.get_version(MODEL, stack.versions["improved"]).status == "champion"
    assert load_record(stack.home, MODEL) is None


def test_8_status_shows_aliases_servers_traffic_and_releases(stack):
    result = subprocess.run([sys.executable, "-m", "fledge.cli.main", "status", MODEL], capture_output=True, text=True,
                            env={**os.environ, "FLEDGE_HOME": str(stack.home.root), "COLUMNS": "200"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"{stack.ref('improved')} 100 % (stable)" in result.stdout
    assert "promoted" in result.stdout and "rolled_back" in result.stdout and "rejected" in result.stdout
    assert f"Rollout of {stack.ref('improved')}: promoted in the watch stage" in result.stdout


def test_9_a_file_changed_in_the_store_after_adoption_is_refused_at_the_next_release(stack):
    from fledge.devtools.native_logging import stored_directory

    version = stack.versions["short-context"]
    weights = stored_directory(stack.registry.client, MODEL, version) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    # As on a worker that has not downloaded it yet: the copy verified at adoption is not here.
    shutil.rmtree(stack.home.checkpoints / MODEL / version)
    aliases_before, traffic_before, serving_before = stack.registry.aliases(MODEL), stack.traffic(), stack.serving()

    summary = release_in_background(stack, "short-context", "auto", [])

    assert (summary.outcome.value, summary.stage) == ("rejected", "verify"), summary.reason
    assert "model.safetensors has a different sha256 than the manifest" in summary.reason
    assert stack.registry.aliases(MODEL) == {**aliases_before, CHALLENGER: version}
    assert (stack.traffic(), stack.serving()) == (traffic_before, serving_before)


def test_10_an_adapter_is_refused_where_the_champion_is_not_its_base(stack):
    from fledge.services.releases import ReleaseInputError

    for variant in ("adapter-improved", "adapter-unsafe"):
        info, _ = stack.registry.register_once(stack.zoo[variant].path, MODEL, base=stack.ref("base"))
        stack.versions[variant] = info.version
    assert stack.registry.aliases(MODEL)[CHAMPION] == stack.versions["improved"]
    with pytest.raises(ReleaseInputError, match=f"trained on {stack.ref('base')}, but the champion {stack.ref('improved')}"):
        release_in_background(stack, "adapter-improved", "auto", [])
    assert stack.traffic() == {stack.ref("improved"): 100}


def test_11_an_adapter_release_runs_on_the_champions_server_and_rolls_back_to_its_base(stack):
    from flows.rollback import rollback
    from serving.lora import served_names

    rollback(MODEL, reason="back to base for its adapters", requested_by="oncall")
    assert stack.traffic() == {stack.ref("base"): 100}
    starts, pids = stack.starts(), {r.pid for r in stack.plane.fleet.records().values()}

    summary = release_in_background(stack, "adapter-improved", "auto", [])

    assert summary.outcome.value == "promoted", summary.reason
    assert stack.starts() == starts and {r.pid for r in stack.plane.fleet.records().values()} == pids  # no new vLLM
    adapter = stack.ref("adapter-improved")
    assert stack.traffic() == {adapter: 100}
    records = stack.plane.fleet.records()
    assert set(records) == {stack.ref("base"), adapter} and records[adapter].adapter_of == stack.ref("base")
    assert stack.registry.aliases(MODEL) == {CHAMPION: stack.versions["adapter-improved"], PREVIOUS: stack.versions["base"]}

    rollback(MODEL, reason="the adapter's answers are too terse", requested_by="oncall")

    assert stack.traffic() == {stack.ref("base"): 100}
    assert stack.serving() == {stack.ref("base")} and stack.starts() == starts
    assert adapter not in served_names(stack.plane.fleet.records()[stack.ref("base")].base_url)  # unloaded


def test_12_an_unsafe_adapter_is_rejected_at_the_safety_gate_without_a_server_start(stack):
    starts = stack.starts()
    summary = release_in_background(stack, "adapter-unsafe", "auto", [])
    assert (summary.outcome.value, summary.stage) == ("rejected", "safety gate"), summary.reason
    assert stack.starts() == starts
    assert stack.traffic() == {stack.ref("base"): 100} and stack.serving() == {stack.ref("base")}


def test_13_a_restarted_gateway_reattaches_to_the_servers_that_kept_serving(stack):
    import httpx

    champion = stack.ref("base")
    other = f"{MODEL}-support"  # a second model of the team: an adapter on base, its own public name
    info, _ = stack.registry.register_once(stack.zoo["adapter-improved"].path, other, base=champion, alias=CHAMPION)
    before, starts, split = stack.plane.fleet.records()[champion], stack.starts(), stack.traffic()
    stack.restart_plane((MODEL, other))
    after = stack.plane.fleet.records()[champion]
    assert (after.pid, after.base_url) == (before.pid, before.base_url) and stack.starts() == starts
    assert stack.traffic() == split == {champion: 100}
    tables = stack.plane.admin.tables()
    assert {m: {k: b.weight for k, b in t.backends.items()} for m, t in tables.items()} == {
        MODEL: {champion: 100}, other: {info.ref: 100}}
    for model, version in ((MODEL, champion), (other, info.ref)):
        answer = httpx.post(f"{stack.plane.url}/v1/completions", timeout=60,
                            json={"model": model, "prompt": "Q: What is 2 plus 3?\nA:", "max_tokens": 4})
        assert answer.status_code == 200 and answer.headers["x-fledge-version"] == version
        assert answer.json()["model"] == model


def test_14_a_canary_by_hand_is_run_by_the_controller_and_moves_the_champion(stack):
    from flows.rollback import rollback

    adapter, starts = stack.ref("adapter-improved"), stack.starts()
    result = subprocess.run([sys.executable, "-m", "fledge.cli.main", "canary", adapter, "--policy", stack.policies["auto"]],
                            capture_output=True, text=True, timeout=600,
                            env={**os.environ, "FLEDGE_HOME": str(stack.home.root), "COLUMNS": "200"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "submitted to the plane's controller" in result.stdout
    rollout = stack.plane.admin.rollout(MODEL)
    assert rollout["end"] == "promoted" and "(fledge canary)" in rollout["spec"]["submitted_by"]
    assert stack.registry.aliases(MODEL)[CHAMPION] == stack.versions["adapter-improved"]
    assert stack.traffic() == {adapter: 100} and stack.starts() == starts  # on base's server: no start
    assert stack.plane.admin.leases().get(MODEL) is None  # the command let its lease go

    rollback(MODEL, reason="back to base after the hand-run canary", requested_by="oncall")
    assert stack.traffic() == {stack.ref("base"): 100}
