"""The release's Prefect mechanics on a real Prefect API and a real MLflow registry, without
model servers: approval by pause and resume, transactions that undo alias moves, the
deployments on their work pools, the refusals before any work, and what release-watch picks."""

from __future__ import annotations

import os
import threading
import time

import pytest
from prefect import flow, runtime
from prefect.client.orchestration import get_client
from prefect.flow_runs import resume_flow_run
from prefect.transactions import transaction

from fledge.services.approval import ApprovalOutcome
from fledge.core.home import FledgeHome
from fledge.core.policy import load_policy
from fledge.core.credentials import digest
from registry.refs import CHALLENGER, CHAMPION, PREVIOUS
from support.keys import approval_policy, signed_answer

pytestmark = pytest.mark.usefixtures("prefect_server")

APPROVAL = approval_policy(load_policy().approval)  # alice approves, bob is listed, mallory is not
REPORT = "# verdict: pass"


def signed(name: str, approve: bool, comment: str = ""):
    """An answer signed for whichever run asks (its id is known once it pauses)."""
    return lambda run_id: signed_answer(name, str(run_id), "approval", digest(REPORT), approve, comment)


def answer_when_paused(run_ids: list, answers: list) -> threading.Thread:
    """Answer the approval form of the flow run, once per pause, as the UI does through the API;
    an answer is a dict or a function of the run id."""

    def answer():
        with get_client(sync_client=True) as client:
            for run_input in answers:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    if run_ids and client.read_flow_run(run_ids[0]).state.is_paused():
                        break
                    time.sleep(0.3)
                resume_flow_run(run_ids[0], run_input=run_input(run_ids[0]) if callable(run_input) else run_input)
                time.sleep(1.5)  # let the flow read it and pause again

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread


def approval_flow(policy):
    from flows.approval import ask_for_approval

    run_ids = []

    @flow(name="approval-check")
    def check():
        run_ids.append(runtime.flow_run.id)
        return ask_for_approval(REPORT, "m/2", policy)[0]

    return check, run_ids


def test_an_allowed_approver_approves_through_the_resume_api():
    check, run_ids = approval_flow(APPROVAL)
    answer_when_paused(run_ids, [signed("alice", True, "looks good")])
    decision = check()
    assert decision.outcome is ApprovalOutcome.APPROVED
    assert (decision.approver, decision.comment) == ("alice", "looks good")


def test_answers_without_a_valid_credential_do_not_count_and_the_flow_keeps_waiting():
    """A listed name typed without a credential, and a signature of another run replayed, are
    logged and not counted; the approver's own signed answer then decides."""
    check, run_ids = approval_flow(APPROVAL)
    replayed = signed_answer("alice", "another-run", "approval", digest(REPORT), True)
    answer_when_paused(run_ids, [{"approve": True, "approver": "alice"}, replayed, signed("mallory", True),
                                 signed("alice", False, "not this week")])
    decision = check()
    assert decision.outcome is ApprovalOutcome.REJECTED
    assert decision.reason == "rejected by alice: not this week"


def test_no_answer_before_the_timeout_rejects():
    check, _ = approval_flow(APPROVAL.model_copy(update={"timeout_seconds": 3}))
    started = time.monotonic()
    decision = check()
    assert decision.outcome is ApprovalOutcome.REJECTED
    assert "no answer within 3 s" in decision.reason
    assert time.monotonic() - started < 30


@pytest.fixture()
def two_versions(registry, tiny_checkpoint, model_name, home_env):
    first = registry.register(tiny_checkpoint, model_name, alias=CHAMPION)
    second = registry.register(tiny_checkpoint, model_name, alias=CHALLENGER)
    return first, second


def promote_in_a_transaction(registry, model_name, first, second, then_fail: bool) -> None:
    from fledge.services.releases import take_snapshot
    from tasks.registry_steps import promote_in_registry

    snapshot = take_snapshot(registry, model_name, None)

    @flow
    def promote():
        with transaction():
            promote_in_registry(model_name, second.ref, first.ref, snapshot.aliases)
            assert registry.aliases(model_name)[CHAMPION] == second.version  # the move happened
            if then_fail:
                raise RuntimeError("the watch found a breach")

    promote()


def test_a_failure_after_the_promotion_rolls_the_aliases_back(registry, two_versions, model_name):
    first, second = two_versions
    with pytest.raises(RuntimeError, match="breach"):
        promote_in_a_transaction(registry, model_name, first, second, then_fail=True)
    assert registry.aliases(model_name) == {CHAMPION: first.version, CHALLENGER: second.version}


def test_a_promotion_that_commits_moves_champion_previous_and_releases_the_challenger(registry, two_versions, model_name):
    first, second = two_versions
    promote_in_a_transaction(registry, model_name, first, second, then_fail=False)
    assert registry.aliases(model_name) == {CHAMPION: second.version, PREVIOUS: first.version}
    assert registry.get_version(model_name, first.version).status == "previous"
    assert registry.get_version(model_name, second.version).status == "champion"


def test_a_release_without_a_running_gateway_is_refused_before_any_work(registry, two_versions, model_name):
    from fledge.services.plane import PlaneNotRunning
    from flows.release import release

    with pytest.raises(PlaneNotRunning, match=f"fledge gateway {model_name}"):
        release(model_name)
    assert registry.aliases(model_name)[CHAMPION] == two_versions[0].version
    experiment = registry.client.get_experiment_by_name("fledge-releases")
    if experiment is not None:
        runs = registry.client.search_runs([experiment.experiment_id], f"tags.`fledge.model` = '{model_name}'")
        assert runs == []


def test_auto_approve_cannot_stand_in_for_a_required_approval(two_versions, model_name):
    from fledge.core.overrides import PolicyRefused
    from flows.release import release

    policy = load_policy()
    policy = policy.model_copy(update={"approval": APPROVAL})
    with pytest.raises(PolicyRefused, match="approval.allow_auto_approve is false"):
        release(model_name, policy=policy, auto_approve=True)


def test_release_watch_picks_challengers_no_release_has_decided(registry, two_versions, model_name, session_home):
    from flows.release_watch import pending_challengers

    second = two_versions[1]
    assert (model_name, second.version) in pending_challengers(registry, FledgeHome(session_home))
    registry.set_tags(model_name, second.version, {"fledge.release.outcome": "rejected"})
    assert (model_name, second.version) not in pending_challengers(registry, FledgeHome(session_home))


def test_release_watch_never_starts_a_second_run_for_a_challenger_whose_run_is_queued(model_name):
    """A run scheduled for a worker has written nothing to the Fledge home yet: the Prefect API
    is asked which release runs are unfinished."""
    from prefect.states import Completed, Scheduled

    from flows.release import release
    from flows.release_watch import already_releasing, unfinished_releases

    with get_client(sync_client=True) as client:
        queued = client.create_flow_run(release, parameters={"model": model_name, "candidate": "7"}, state=Scheduled())
        done = client.create_flow_run(release, parameters={"model": model_name, "candidate": "8"}, state=Completed())
    unfinished = unfinished_releases()
    assert already_releasing(model_name, "7", unfinished)
    assert not already_releasing(model_name, "8", unfinished)
    with get_client(sync_client=True) as client:
        client.delete_flow_run(queued.id)
        client.delete_flow_run(done.id)


def test_deployments_are_registered_on_the_cpu_and_gpu_pools_with_the_policy_cron():
    from flows.deployments import deploy_to_pools

    policy = load_policy()
    names = deploy_to_pools(policy)
    assert {"release/release", "release-watch/release-watch", "rollback/rollback", "promote/promote",
            "evaluate-suites/gpu", "quantize-version/gpu"} == set(names)
    with get_client(sync_client=True) as client:
        watch = client.read_deployment_by_name("release-watch/release-watch")
        assert watch.work_pool_name == "cpu"
        assert [s.schedule.cron for s in watch.schedules] == [policy.schedule.release_watch_cron]
        assert client.read_deployment_by_name("evaluate-suites/gpu").work_pool_name == "gpu"
        release = client.read_deployment_by_name("release/release")
        assert set(release.parameter_openapi_schema["properties"]) == {"model", "candidate", "policy", "overrides",
                                                                       "auto_approve", "requester_credential"}
        # The policy is pinned as content, never a path a worker elsewhere would not have.
        assert release.parameters["policy"] == policy.model_dump(mode="json")
        assert f"fledge-policy-hash:{policy.content_hash}" in release.tags


def run_from_deployment(deployment_name: str, parameters: dict, env: dict) -> object:
    """A run of the deployment created through the API as the UI's Run button creates it, then
    executed the way a process worker executes it (`prefect flow-run execute`)."""
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(deployment_name)
        run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
    subprocess.run([sys.executable, "-m", "prefect", "flow-run", "execute", str(run.id)], timeout=300,
                   env={**os.environ, **env, "PREFECT_API_URL": PREFECT_API_URL.value()}, capture_output=True)
    with get_client(sync_client=True) as client:
        return client.read_flow_run(run.id)


def test_a_deployment_run_cannot_swap_or_weaken_the_deployed_policy(registry, two_versions, model_name, home_env):
    """The policy is fixed when deployed: a run parameter carrying a weaker policy (no approval,
    one canary step) or a weakening override is refused before any work, naming the fields; one
    that only strengthens it goes on (here to the next refusal: no gateway runs)."""
    from flows.deployments import deploy_to_pools

    from fledge.core.overrides import apply_overrides

    deployed = load_policy().model_copy(update={"approval": APPROVAL})
    deploy_to_pools(deployed)
    env = {"FLEDGE_HOME": str(home_env)}
    weaker = apply_overrides(deployed, {"approval.required": False, "canary.steps": [100]})
    run = run_from_deployment("release/release", {"model": model_name, "policy": weaker.model_dump(mode="json")}, env)
    assert run.state.is_failed()
    assert "weakens the deployed policy" in run.state.message
    assert "approval.required True -> False" in run.state.message and "canary.steps" in run.state.message
    run = run_from_deployment("release/release", {"model": model_name, "overrides": {"canary.max_error_rate": 0.08}}, env)
    assert run.state.is_failed() and "canary.max_error_rate 0.05 -> 0.08" in run.state.message
    run = run_from_deployment("release/release", {"model": model_name, "auto_approve": True}, env)
    assert run.state.is_failed() and "approval.allow_auto_approve is false" in run.state.message
    run = run_from_deployment("release/release", {"model": model_name, "overrides": {"canary.bake_seconds": 60}}, env)
    assert run.state.is_failed() and f"fledge gateway {model_name}" in run.state.message  # past the policy check
    experiment = registry.client.get_experiment_by_name("fledge-releases")
    if experiment is not None:  # nothing started: no release run in MLflow
        assert registry.client.search_runs([experiment.experiment_id], f"tags.`fledge.model` = '{model_name}'") == []


@pytest.fixture()
def plane_for(session_home):
    """A gateway recorded as the session home's serving plane, with one scripted backend."""
    from support.backend import ScriptedBackend

    from fledge.core.state import write_json
    from serving.gateway.client import GatewayAdmin
    from serving.gateway.routes import Backend
    from serving.gateway.server import BackgroundGateway, admin_token, build_gateway

    home = FledgeHome(session_home)
    started = []

    def start(model: str) -> GatewayAdmin:
        backend = ScriptedBackend("stable").__enter__()
        gateway = BackgroundGateway(build_gateway(home.state, load_policy().serving.gateway)).start()
        started.extend([backend, gateway])
        write_json(home.files.plane, {"url": gateway.url, "models": [model], "pid": os.getpid()})
        admin = GatewayAdmin(gateway.url, admin_token(home.state))
        admin.add_backend(model, Backend(version=f"{model}/1", base_url=backend.base_url))
        return admin

    yield start
    home.files.plane.unlink(missing_ok=True)
    home.files.routes.unlink(missing_ok=True)
    for thing in started:
        thing.stop() if hasattr(thing, "stop") else thing.close()


def test_a_release_preempted_by_a_rollback_never_undoes_it(registry, two_versions, model_name, plane_for):
    """The release promoted, then an operator's rollback took the model's lease and moved the
    aliases back itself; the release then fails (its watch breached): its transaction's hooks
    find the lease lost and leave the registry and the traffic as the rollback made them."""
    from fledge.services.releases import take_snapshot
    from serving.gateway.leases import LeaseHeld, LeaseLost
    from tasks import serving_steps
    from tasks.registry_steps import promote_in_registry

    first, second = two_versions
    admin = plane_for(model_name)
    snapshot = take_snapshot(registry, model_name, None)
    leases_seen = {}

    @flow
    def preempted_release():
        with serving_steps.model_lease(model_name, "release", f"release of {second.ref}") as held:
            with pytest.raises(LeaseHeld, match=f"held by release of {second.ref}"):
                admin.acquire_lease(model_name, "a second release", "release", 60)
            with transaction():
                promote_in_registry(model_name, second.ref, first.ref, snapshot.aliases)
                # The operator's emergency rollback, from another process: it preempts the lease.
                admin.acquire_lease(model_name, "rollback by ops", "rollback", 60, preempt=True)
                registry.set_alias(model_name, CHAMPION, first.version)  # previous back as champion
                registry.delete_alias(model_name, PREVIOUS)
                leases_seen["lost"] = not held.still_held()
                raise RuntimeError("the watch found a breach")

    with pytest.raises(RuntimeError, match="breach"):
        preempted_release()
    assert leases_seen == {"lost": True}
    # The rollback's aliases; the snapshot put back would have brought the challenger alias back too.
    assert registry.aliases(model_name) == {CHAMPION: first.version}
    with pytest.raises(LeaseLost):  # an unfenced change while the rollback holds the model
        admin.set_weights({f"{model_name}/1": 100})


def test_an_outcome_is_posted_to_the_policy_urls_and_a_dead_receiver_never_fails_the_run():
    from prefect import flow

    from fledge.core.policy import NotificationPolicy
    from support.receiver import WebhookReceiver
    from tasks.reporting import notify

    with WebhookReceiver() as receiver:
        policy = NotificationPolicy(urls=[receiver.url, "json://127.0.0.1:9/nobody-listens"], timeout_seconds=2)

        @flow(name="notify-check")
        def check():
            return notify(policy, "m", "rolled_back", "Release of m/2: ROLLED_BACK", "the canary's errors")

        problems = check()
        post = receiver.wait_for("ROLLED_BACK")
        assert post["path"] == "/fledge-hook" and post["message"] == "the canary's errors" and post["type"] == "warning"
        assert len(problems) == 1 and "did not accept" in problems[0]
        quiet = NotificationPolicy(urls=[receiver.url], outcomes=["promoted"])

        @flow(name="notify-check")
        def not_listed():
            return notify(quiet, "m", "rejected", "Release of m/3: REJECTED", "-")

        assert not_listed() == [] and len(receiver.posts) == 1  # rejections are not among its outcomes
