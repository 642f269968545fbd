"""The rollout controller: the serving plane's own threads own every rollout of its model, from
the canary's first step to the end of the post-promotion watch.

A release submits a rollout (what to roll out against what, the policy sections that judge it,
and the registry aliases and routes from before it) and waits for its end; it may abort it.
The controller stores the rollout before any traffic moves, runs the canary
(serving.canary.driver; decisions in serving.canary.state_machine), and on promotion moves the
registry aliases itself, so the registry and the traffic agree when the process that asked has
died. It then runs the watch (serving.canary.watch): a breach puts the traffic and the aliases
back as they were before the rollout; a pass retires the previous champion's instance. A plane
that starts again resumes every stored rollout from its stage.

Operators pause, resume and abort a rollout (`fledge rollout ...` or the admin API) whoever
holds the model's lease; abort always means "all traffic back on stable, aliases as before".
Anything the controller cannot get past (the registry unreachable past the progress deadline)
ends the rollout as failed, with traffic and aliases put back.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import traceback
import uuid
from enum import StrEnum
from typing import Callable, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field

from fledge.core.home import FledgeHome
from fledge.core.outcome import Check, GateResult, Outcome
from fledge.core.policy import CanaryPolicy, ShadowPolicy, WatchPolicy
from fledge.core.state import read_json, write_atomic
from fledge.services import rollout as canary_rollout
from fledge.services.instances import retire_instance
from fledge.services.shadow import PairScorer, Prober
from registry.store import ModelRegistry
from registry.traces import link_traces, log_pair_traces
from registry.roles import promote_aliases, restore_aliases
from serving.canary.analysis import CanaryAnalysis
from serving.canary.driver import load_state
from serving.canary.paired import PairedAnalysis, analyze_pairs
from serving.canary.review import Review, ReviewActionKind, decide_review, question, waiting_for_answer
from serving.canary.shadow_step import ShadowActionKind, decide_shadow
from serving.canary.state_machine import Phase, RolloutState
from serving.canary.watch import judge_watch
from serving.canary.window import VersionWindow
from serving.errors import RolloutConflict
from serving.fleet import Fleet
from serving.gateway.client import GatewayAdmin, GatewayAdminError
from serving.gateway.routes import Backend, RouteChangeRefused, RouteTable
from serving.naming import baseline_key

Log = Callable[[str], None]
T = TypeVar("T")


class RolloutSpec(BaseModel):
    """What a release asks the controller to roll out."""

    model_config = ConfigDict(extra="forbid")

    release_id: str  # the release's MLflow run: one per release, whichever run of it submits
    model: str
    stable: str  # the champion's ref
    canary: str  # the candidate's ref
    canary_url: str
    baseline_url: str | None = None  # the champion's baseline instance, where the policy has one
    canary_policy: CanaryPolicy
    watch_policy: WatchPolicy
    shadow_policy: ShadowPolicy | None = None  # None or not enabled: no shadow step, no mirrored pairs
    aliases_before: dict[str, str]  # the release roles before the release
    routes_before: dict | None = None  # the route table before the release
    submitted_by: str


class Stage(StrEnum):
    SHADOW = "shadow"  # mirrored requests only: users get none of the candidate's answers
    CANARY = "canary"
    PROMOTING = "promoting"  # the canary took all traffic; the aliases move next
    WATCH = "watch"
    ENDED = "ended"


class RolloutEnd(StrEnum):
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"  # by the canary's analysis, its progress deadline or the watch
    ABORTED = "aborted"  # by an operator (or a release that stopped)
    FAILED = "failed"  # the controller could not go on; traffic and aliases were put back


class ShadowRecord(BaseModel):
    """The shadow step's evidence so far (and, once it ended, its last analysis)."""

    model_config = ConfigDict(extra="forbid")

    pairs_after: int  # the gateway's pair number when the step began: its pairs are the ones after it
    elapsed_s: float = 0.0  # looked at, pauses excluded: what the deadline counts
    analysis: PairedAnalysis | None = None
    probes_sent: int = 0
    decision: str = ""


class ManagedRollout(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    spec: RolloutSpec
    owner: str  # the controller that runs it
    submitted_at: float  # epoch, for people
    stage: Stage = Stage.CANARY
    paused_by: str | None = None
    abort_requested_by: str | None = None
    end: RolloutEnd | None = None
    ended_in: Stage | None = None  # canary or watch (or promoting)
    reason: str = ""
    shadow: ShadowRecord | None = None
    review: Review | None = None  # the last question put to a person about a paired discordance, in any stage
    sampled: PairedAnalysis | None = None  # the sampled pairs' last analysis through the weighted steps and watch
    canary: RolloutState | None = None  # the canary's state machine (live from the driver's file while it runs)
    previous: VersionWindow | None = None  # what users of the previous champion saw during the canary
    watch: GateResult | None = None
    stage_seconds: dict[str, float] = Field(default_factory=dict)

    @property
    def running(self) -> bool:
        return self.end is None

    @property
    def shadowed(self) -> bool:
        policy = self.spec.shadow_policy
        return policy is not None and policy.enabled

    def progress(self) -> str:
        """Where it is: the stage and canary step, or how it ended."""
        if self.end is not None:
            return f"{self.end.value} in the {self.ended_in.value if self.ended_in else '-'} stage: {self.reason}"
        where = self.stage.value
        if self.stage is Stage.SHADOW and self.shadow is not None:
            analysis = self.shadow.analysis
            where = f"shadow step: {analysis.pairs if analysis else 0} pairs"
        if self.stage is Stage.CANARY and self.canary is not None:
            steps = self.spec.canary_policy.steps
            where = (f"canary {self.canary.canary_weight} % (step {self.canary.step + 1} of {len(steps)})"
                     if self.canary.phase is Phase.BAKING else f"canary {self.canary.phase.value}")
        if self.review is not None and self.review.open:
            where += f", waiting for a person on {', '.join(self.review.checks)}"
        return where + (f", paused by {self.paused_by}" if self.paused_by else "")

    def describe(self) -> str:
        """One line for `fledge status` and the CLI: where it is, who owns it, who asked."""
        if self.end is not None:
            return self.progress()
        return f"{self.progress()}; owned by {self.owner}; submitted by {self.spec.submitted_by}"


def rollout_in_progress(home: FledgeHome, model: str) -> bool:
    saved = read_json(home.files.managed_rollout(model))
    return saved is not None and saved.get("end") is None


def models_with_rollouts(home: FledgeHome) -> list[str]:
    """The models whose rollout on record has not ended."""
    saved = (read_json(path) for path in home.files.managed_rollouts())
    return [s["spec"]["model"] for s in saved if s is not None and s.get("end") is None]


class _PlaneStopping(Exception):
    """The plane is shutting down: the rollout stays where it is and resumes at the next start."""


def _transient(error: Exception) -> bool:
    return isinstance(error, httpx.TransportError) or (isinstance(error, GatewayAdminError) and error.retryable)


class RolloutController:
    def __init__(self, home: FledgeHome, registry: ModelRegistry, admin: GatewayAdmin, fleet: Fleet, log: Log = print,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] | None = None):
        """`admin`: a client authenticated as the controller (its changes carry no lease)."""
        self.home, self.registry, self.admin, self.fleet, self.log = home, registry, admin, fleet, log
        self.clock = clock
        self.owner = f"the rollout controller of the serving plane (pid {os.getpid()} on {socket.gethostname()})"
        self._stopping = threading.Event()
        self._sleep = sleep or self._stopping.wait  # a stop wakes every sleeping rollout at once
        self._lock = threading.RLock()
        self._threads: dict[str, threading.Thread] = {}
        self._admins: dict[str, GatewayAdmin] = {}

    def _gateway(self, model: str) -> GatewayAdmin:
        """The admin client addressing `model`'s route table (the plane serves several models)."""
        with self._lock:
            if model not in self._admins:
                self._admins[model] = self.admin.for_model(model)
            return self._admins[model]

    # ---- the admin API's side (serving.gateway.app.RolloutService): JSON in, JSON out ----------

    def submit(self, body: dict) -> dict:
        spec = RolloutSpec.model_validate(body)
        with self._lock:
            current = self._load(spec.model)
            if current is not None and current.spec.release_id == spec.release_id:
                # A re-run of the same release: it waits for the rollout already on record.
                return self._view(current)
            if current is not None and current.running:
                raise RolloutConflict(
                    f"A rollout of {current.spec.canary} is in progress for {spec.model} ({current.describe()}). "
                    f"Wait for it to end, or abort it: `fledge rollout abort {spec.model}`.")
            rollout = ManagedRollout(id=uuid.uuid4().hex[:12], spec=spec, owner=self.owner, submitted_at=time.time())
            if rollout.shadowed:
                rollout.stage = Stage.SHADOW
            self._save(rollout)  # on record before any traffic moves
            self.home.files.rollout(spec.model).unlink(missing_ok=True)  # the canary state of an earlier rollout
            self._start(spec.model)
            self.log(f"Rollout {rollout.id} of {spec.canary} against {spec.stable} submitted by {spec.submitted_by}")
            return self._view(rollout)

    def get(self, model: str) -> dict:
        rollout = self._load(model)
        if rollout is None:
            raise KeyError(model)
        return self._view(rollout)

    def list(self) -> list[dict]:
        return [self._view(r) for path in self.home.files.managed_rollouts()
                if (r := self._read(path)) is not None]

    def command(self, model: str, command: str, by: str, comment: str | None = None) -> dict:
        with self._lock:
            rollout = self._load(model)
            if rollout is None:
                raise KeyError(model)
            if not rollout.running:
                raise RolloutConflict(f"The rollout of {rollout.spec.canary} has already ended: {rollout.describe()}.")
            if command in ("approve", "reject"):
                review = rollout.review
                if review is None or not review.open:
                    raise RolloutConflict(f"The rollout of {rollout.spec.canary} is not waiting for a person's answer "
                                          f"({rollout.describe()}).")
                review.answer, review.by, review.comment = command, by, comment
            elif command == "pause":
                if rollout.stage not in (Stage.SHADOW, Stage.CANARY):
                    raise RolloutConflict(f"The rollout of {rollout.spec.canary} is in its {rollout.stage.value} stage; only "
                                          f"the shadow step and the canary's steps pause. Abort it to put everything back: "
                                          f"`fledge rollout abort {model}`.")
                rollout.paused_by = by
            elif command == "resume":
                rollout.paused_by = None
            elif command == "abort":
                rollout.abort_requested_by = by
            self._save(rollout)
        self.log(f"Rollout of {rollout.spec.canary}: {command} by {by}")
        return self._view(rollout)

    # ---- lifecycle -------------------------------------------------------------------------

    def resume_all(self) -> list[str]:
        """Start a thread for every stored rollout that has not ended; returns their models."""
        resumed = []
        for path in self.home.files.managed_rollouts():
            rollout = self._read(path)
            if rollout is not None and rollout.running:
                self.log(f"Resuming the rollout of {rollout.spec.canary} ({rollout.describe()})")
                self._start(rollout.spec.model)
                resumed.append(rollout.spec.model)
        return resumed

    def stop(self, timeout_s: float = 15.0) -> None:
        """Leave every rollout where it is (stored), for the next plane to resume."""
        self._stopping.set()
        for thread in list(self._threads.values()):
            thread.join(timeout=timeout_s)
        with self._lock:
            for admin in self._admins.values():
                admin.close()
            self._admins.clear()

    def wait(self, model: str, timeout_s: float) -> ManagedRollout | None:
        """For tests and the CLI in this process: the rollout once its thread is done."""
        thread = self._threads.get(model)
        if thread is not None:
            thread.join(timeout=timeout_s)
        return self._load(model)

    def _start(self, model: str) -> None:
        running = self._threads.get(model)
        if running is not None and running.is_alive():
            return
        thread = threading.Thread(target=self._run, args=(model,), name=f"fledge-rollout-{model}", daemon=True)
        self._threads[model] = thread
        thread.start()

    # ---- one rollout, stage by stage ------------------------------------------------------------

    def _run(self, model: str) -> None:
        try:
            for stage, step in ((Stage.SHADOW, self._shadow), (Stage.CANARY, self._canary), (Stage.PROMOTING, self._promote),
                                (Stage.WATCH, self._watch)):
                rollout = self._load(model)
                if rollout.running and rollout.stage is stage:
                    started = self.clock()
                    step(rollout)
                    self._update(model, lambda r: r.stage_seconds.__setitem__(
                        stage.value, r.stage_seconds.get(stage.value, 0.0) + self.clock() - started))
        except _PlaneStopping:
            rollout = self._load(model)
            self.log(f"The rollout of {rollout.spec.canary} stays at {rollout.stage.value}: the plane is stopping; "
                     "the next plane resumes it")
        except Exception as error:  # noqa: BLE001 - whatever it was, users go back to what worked
            self.log(f"The rollout controller failed on {model}: {traceback.format_exc()}")
            rollout = self._load(model)
            try:
                self._put_back(rollout, RolloutEnd.FAILED, f"the rollout controller failed in the {rollout.stage.value} "
                               f"stage: {type(error).__name__}: {error}")
            except _PlaneStopping:
                pass

    def _control(self, model: str):
        def control(state: RolloutState):
            if self._stopping.is_set():
                raise _PlaneStopping()
            rollout = self._load(model)
            if rollout.abort_requested_by:
                return "abort"
            # A question about the sampled pairs holds the weights; once it times out the next
            # look's paired analysis rolls back (serving.canary.review).
            policy = rollout.spec.shadow_policy
            asking = policy is not None and waiting_for_answer(rollout.review, policy, time.time())
            return "pause" if rollout.paused_by or asking else None
        return control

    # ---- the shadow step and the sampled pairs (serving.canary.paired) --------------------------

    @contextlib.contextmanager
    def _probing(self, rollout: ManagedRollout):
        """Probes through a weighted step or the watch too (the shadow step sends its own): the
        probes' pairs join the sampled ones there."""
        if not rollout.shadowed:
            yield
            return
        policy = rollout.spec.shadow_policy
        prober = Prober(self._gateway(rollout.spec.model), policy, list(PairScorer(policy).probes.values())).start()
        try:
            yield
        finally:
            prober.stop()

    def _unless_aborted(self, model: str, where: str) -> ManagedRollout | None:
        """The rollout's record at a look; None once an operator's abort has put everything back
        (a stopping plane leaves the rollout where it is)."""
        if self._stopping.is_set():
            raise _PlaneStopping()
        current = self._load(model)
        if current.abort_requested_by:
            self._put_back(current, RolloutEnd.ABORTED, f"aborted by {current.abort_requested_by} {where}")
            return None
        return current

    def _mirror_keys(self, spec: RolloutSpec) -> tuple[str, str]:
        """The candidate and what its answers are paired with: the baseline instance where the
        rollout has one, else the stable instance."""
        return spec.canary, baseline_key(spec.stable) if spec.baseline_url else spec.stable

    def _mirror(self, spec: RolloutSpec, candidate: str, baseline: str, share: float, what: str) -> None:
        policy, gateway = spec.shadow_policy, self._gateway(spec.model)
        self._retrying(lambda: gateway.set_mirror(candidate, baseline, share, policy.max_in_flight,
                                                  policy.mirror_max_tokens), spec, what)

    def _place_backends(self, spec: RolloutSpec) -> None:
        gateway = self._gateway(spec.model)
        canary_rollout.place_backend(gateway, spec.model, Backend(version=spec.canary, base_url=spec.canary_url,
                                                                  role="canary"))
        if spec.baseline_url:
            canary_rollout.place_backend(gateway, spec.model, Backend(
                version=baseline_key(spec.stable), base_url=spec.baseline_url, role="baseline", served_model=spec.stable))

    def _shadow(self, rollout: ManagedRollout) -> None:
        """Mirror the policy's share of live requests to candidate and baseline, score the pairs
        and send probes, until decide_shadow passes, rolls back or asks a person."""
        spec, policy = rollout.spec, rollout.spec.shadow_policy
        gateway = self._gateway(spec.model)
        self._retrying(lambda: self._place_backends(spec), spec, "add the candidate and the baseline at 0 %")
        candidate, baseline = self._mirror_keys(spec)
        if rollout.shadow is None:
            after = self._retrying(lambda: gateway.mirror()["pairs_seq"], spec, "read the gateway's mirror")
            rollout = self._update(spec.model, lambda r: setattr(r, "shadow", ShadowRecord(pairs_after=after)))
        self._mirror(spec, candidate, baseline, policy.mirror_share, "mirror live requests")
        scorer = PairScorer(policy)
        prober = Prober(gateway, policy, list(scorer.probes.values())).start()
        self.log(f"Shadow step: {policy.mirror_share:.0%} of live requests mirrored to {candidate} and {baseline} "
                 f"(users get none of the candidate's answers); {policy.min_pairs} pairs needed, deadline "
                 f"{policy.deadline_seconds:g} s")
        try:
            last = self.clock()
            while True:
                current = self._unless_aborted(spec.model, "in the shadow step")
                if current is None:
                    return
                now = self.clock()
                if current.paused_by:
                    last = now
                    self._sleep(spec.canary_policy.analysis_interval_seconds)
                    continue
                record = current.shadow
                elapsed = record.elapsed_s + (now - last)
                last = now
                raw = self._retrying(lambda: gateway.pairs(after=max([record.pairs_after, *scorer.scored])), spec,
                                     "read the mirrored pairs")
                scorer.add(raw)
                analysis = analyze_pairs(scorer.pairs(record.pairs_after), policy, spec.canary_policy)
                action = decide_shadow(analysis, elapsed, policy, time.time(), current.review)

                def keep(r: ManagedRollout) -> None:
                    r.shadow.elapsed_s, r.shadow.analysis, r.shadow.probes_sent = elapsed, analysis, prober.sent
                    r.shadow.decision = action.reason
                    if action.ask:
                        r.review = question(action.ask, action.reason, analysis, Stage.SHADOW.value, time.time())
                current = self._update(spec.model, keep)
                if action.ask:
                    self._asked(spec, "Shadow step", action.reason)
                if action.kind in (ShadowActionKind.ROLLBACK, ShadowActionKind.PASS):
                    self._trace_pairs(current, scorer.pairs(record.pairs_after))
                if action.kind is ShadowActionKind.ROLLBACK:
                    self._put_back(current, RolloutEnd.ROLLED_BACK, action.reason)
                    return
                if action.kind is ShadowActionKind.PASS:
                    self.log(f"Shadow step passed: {action.reason}")
                    self._mirror(spec, candidate, baseline, policy.sampled_share, "mirror a sample")
                    self._update(spec.model, lambda r: setattr(r, "stage", Stage.CANARY))
                    return
                self._sleep(spec.canary_policy.analysis_interval_seconds)
        finally:
            prober.stop()

    def _trace_pairs(self, rollout: ManagedRollout, pairs: list) -> None:
        """The shadow step's evidence as MLflow traces: the policy's number of pairs, those where
        the two sides disagree first. Evidence, not a decision: a failure to log is reported and
        the rollout goes on."""
        spec, policy = rollout.spec, rollout.spec.shadow_policy
        if not policy.trace_pairs or not pairs:
            return
        def agree(pair) -> bool:
            return (pair.baseline.refused, pair.baseline.status, pair.baseline.correct) == (
                pair.candidate.refused, pair.candidate.status, pair.candidate.correct)
        chosen = sorted(pairs, key=agree)[:policy.trace_pairs]
        tags = {"fledge.rollout": rollout.id, "fledge.model": spec.model, "fledge.candidate": spec.canary,
                "fledge.stage": "shadow"}
        try:
            ids = log_pair_traces(self.registry.tracking_uri, [p.model_dump(mode="json") for p in chosen], tags,
                                  policy.trace_retention_days)
        except Exception as error:  # noqa: BLE001 - see the docstring
            self.log(f"Could not log the shadow step's pairs as MLflow traces ({type(error).__name__}: {error})")
            return
        self.log(f"Shadow step: {len(ids)} pairs logged as MLflow traces (experiment fledge-shadow, tag "
                 f"fledge.rollout={rollout.id})")
        try:
            link_traces(self.registry.tracking_uri, ids, spec.release_id)
        except Exception as error:  # noqa: BLE001 - a rollout submitted by hand has no release run to link to
            self.log(f"The traces are not linked to a release run ({type(error).__name__})")

    def _asked(self, spec: RolloutSpec, where: str, reason: str) -> None:
        self.log(f"{where}: a person must judge this ({reason}); answer with `fledge rollout approve|reject "
                 f"{spec.model}` or in the release's approval form")

    def _sampled_pairs(self, spec: RolloutSpec, after: int) -> Callable[[], CanaryAnalysis | None]:
        """The sampled pairs' analysis for the weighted steps (and the watch): every look an
        interim one, kept apart from users' figures. A failure rolls back; a discordance a
        person must judge holds the rollout (the driver's control, the watch's window) until
        the answer, and a rejection or no answer in time fails the look."""
        policy = spec.shadow_policy
        scorer = PairScorer(policy)
        gateway = self._gateway(spec.model)

        def look() -> CanaryAnalysis | None:
            try:
                scorer.add(gateway.pairs(after=max([after, *scorer.scored])))
            except Exception as error:  # noqa: BLE001 - a look without new pairs; the next one reads them
                if not _transient(error):
                    raise
            analysis = analyze_pairs(scorer.pairs(after), policy, spec.canary_policy, in_shadow_step=False)
            asked = decide_review(analysis, self._load(spec.model).review, policy, time.time())

            def keep(r: ManagedRollout) -> None:
                r.sampled = analysis
                if asked.kind is ReviewActionKind.ASK:
                    r.review = question(asked.checks, asked.reason, analysis, r.stage.value, time.time())
            stage = self._update(spec.model, keep).stage
            if asked.kind is ReviewActionKind.ASK:
                self._asked(spec, f"Sampled pairs in the {stage.value} stage", asked.reason)
            checks = [c for c in analysis.checks if c.outcome is Outcome.FAIL]
            if asked.kind is ReviewActionKind.REJECTED:
                checks.append(Check(name="paired review", outcome=Outcome.FAIL, detail=asked.reason))
            return CanaryAnalysis.from_checks("paired", checks) if checks else CanaryAnalysis(
                **analysis.model_dump(include={"gate", "outcome", "checks", "reasons"}))
        return look

    def _canary(self, rollout: ManagedRollout) -> None:
        spec = rollout.spec
        gateway = self._gateway(spec.model)
        paired = None
        if rollout.shadowed:
            after = rollout.shadow.pairs_after if rollout.shadow else 0
            paired = self._sampled_pairs(spec, after)
        policy = spec.canary_policy
        if policy.strategy == "blue-green":  # the shadow step judged it: all traffic at once, the old kept at 0 %
            policy = policy.model_copy(update={"steps": [100]})
        with self._probing(rollout):
            state = canary_rollout.run_canary(
                gateway, self.home.files.rollout(spec.model), policy, spec.model, spec.stable, spec.canary,
                spec.canary_url, spec.baseline_url, log=self.log, control=self._control(spec.model), paired=paired)
        self._update(spec.model, lambda r: setattr(r, "canary", state))
        if state.phase is Phase.PROMOTED:
            self._update(spec.model, lambda r: setattr(r, "stage", Stage.PROMOTING))
            return
        by = self._load(spec.model).abort_requested_by
        if by:
            self._put_back(rollout, RolloutEnd.ABORTED, f"aborted by {by} during the canary")
        else:
            self._put_back(rollout, RolloutEnd.ROLLED_BACK, "canary rolled back: " + (
                "; ".join(state.failed_checks) or state.history[-1].reason))

    def _promote(self, rollout: ManagedRollout) -> None:
        """The canary has all traffic: the previous champion's figures are kept for the watch,
        the baseline instance retires, and the aliases move (champion -> canary, previous ->
        the old champion). Each part is idempotent: a controller restarted half-way redoes it."""
        spec = rollout.spec
        gateway = self._gateway(spec.model)
        state = rollout.canary or load_state(self.home.files.rollout(spec.model))
        if rollout.previous is None and state is not None:
            observations = self._retrying(lambda: gateway.observations(after=state.started_seq), spec, "read the gateway")
            previous = VersionWindow.from_observations(spec.stable, observations,
                                                       route_keys={spec.stable, baseline_key(spec.stable)})
            self._update(spec.model, lambda r: setattr(r, "previous", previous))
        # The champion's baseline instance (or its staging copy): of no use once it is not the champion.
        self._retrying(lambda: retire_instance(gateway, self.fleet, baseline_key(spec.stable), log=self.log), spec,
                       "retire the baseline instance")
        new_version, old_version = spec.canary.rsplit("/", 1)[1], spec.stable.rsplit("/", 1)[1]
        if rollout.shadowed:  # the baseline is gone: the watch pairs the new champion with the previous one, kept warm
            self._mirror(spec, spec.canary, spec.stable, spec.shadow_policy.sampled_share, "mirror a sample")
        self._retrying(lambda: promote_aliases(self.registry, spec.model, new_version, old_version), spec,
                       "move the registry aliases")
        self.log(f"Registry: {spec.model}@champion -> {spec.canary}, {spec.model}@previous -> {spec.stable}")
        self._update(spec.model, lambda r: setattr(r, "stage", Stage.WATCH))

    def _watch(self, rollout: ManagedRollout) -> None:
        """The new champion over the policy's window, the previous one kept warm at 0 %. A
        restarted controller watches a whole window again."""
        spec, policy = rollout.spec, rollout.spec.watch_policy
        gateway = self._gateway(spec.model)
        after = self._retrying(gateway.sequence, spec, "read the gateway")
        paired = None
        if rollout.shadowed:
            paired = self._sampled_pairs(spec, self._retrying(lambda: gateway.mirror()["pairs_seq"], spec,
                                                              "read the gateway's mirror"))
        end = self.clock() + policy.window_seconds
        self.log(f"Watching {spec.canary} for {policy.window_seconds:g} s with {spec.stable} kept warm")
        with self._probing(rollout):
            result, figures = self._watch_window(rollout, gateway, after, end, paired)
        if result is None:
            return  # ended in the window: put back
        self._update(spec.model, lambda r: setattr(r, "watch", result))
        self.log(f"Watch passed: {figures.requests} requests, TTFT p95 {figures.ms('ttft_s', 95) or 0:.0f} ms")
        self._retrying(lambda: retire_instance(gateway, self.fleet, spec.stable, log=self.log), spec,
                       "retire the previous champion's instance")
        self._end(spec.model, RolloutEnd.PROMOTED, f"{spec.canary} is the champion; {spec.stable} is previous")

    def _watch_window(self, rollout: ManagedRollout, gateway: GatewayAdmin, after: int, end: float, paired):
        """Look until the window closes: (the passing result, the new champion's figures), or
        (None, None) once a breach or an abort has put everything back."""
        spec, policy = rollout.spec, rollout.spec.watch_policy
        while True:
            current = self._unless_aborted(spec.model, "during the watch")
            if current is None:
                return None, None
            # An open question about the sampled pairs holds the window open until its answer.
            asking = paired is not None and waiting_for_answer(current.review, spec.shadow_policy, time.time())
            closed = self.clock() >= end and not asking
            observations = self._retrying(lambda: gateway.observations(after=after), spec, "read the gateway")
            figures = VersionWindow.from_observations(spec.canary, observations)
            result = judge_watch(figures, current.previous, policy, window_closed=closed)
            sampled = paired() if paired is not None else None
            if sampled is not None and sampled.outcome is Outcome.FAIL:  # kept apart from users' figures
                result = GateResult.from_checks("watch", result.checks + [c for c in sampled.checks
                                                                         if c.outcome is Outcome.FAIL])
            if result.outcome is Outcome.FAIL or (closed and result.outcome is not Outcome.PASS):
                self._update(spec.model, lambda r: setattr(r, "watch", result))
                self._put_back(current, RolloutEnd.ROLLED_BACK, "post-promotion watch: " + "; ".join(result.reasons))
                return None, None
            if closed:
                return result, figures
            self._sleep(spec.canary_policy.analysis_interval_seconds)

    # ---- putting back ----------------------------------------------------------------------

    def _put_back(self, rollout: ManagedRollout, end: RolloutEnd, reason: str) -> None:
        """Traffic first (users), then the aliases, then the candidate's instance goes."""
        spec = rollout.spec
        gateway = self._gateway(spec.model)
        self._retrying(lambda: self._traffic_back(spec), spec, "put the traffic back")
        if rollout.stage is not Stage.CANARY:  # the aliases may have moved
            changes = self._retrying(lambda: restore_aliases(self.registry, spec.model, spec.aliases_before),
                                     spec, "put the registry aliases back")
            if changes:
                self.log("Registry put back: " + "; ".join(changes))
        self._retrying(lambda: retire_instance(gateway, self.fleet, spec.canary, drain_seconds=10, log=self.log),
                       spec, "retire the candidate's instance")
        self._end(spec.model, end, reason)

    def _traffic_back(self, spec: RolloutSpec) -> None:
        """The split from before the rollout, on the backends that are still registered; where
        the gateway refuses it (a backend fails its health check) the previous champion alone,
        as the last stable that answers."""
        gateway = self._gateway(spec.model)
        table = gateway.routes()
        if table is None:
            return
        if spec.routes_before is not None:
            snapshot = RouteTable.model_validate(spec.routes_before)
            live = {key: table.backends[key].base_url for key in snapshot.backends if key in table.backends}
            try:
                restored = gateway.put_routes(snapshot.restored_on(live))
                self.log("Traffic put back as before the rollout: "
                         + ", ".join(f"{b.version} {b.weight} %" for b in restored.backends.values()))
                return
            except (RouteChangeRefused, GatewayAdminError) as error:
                if isinstance(error, GatewayAdminError) and error.retryable:
                    raise
                self.log(f"The split from before the rollout cannot be restored ({error}); {spec.stable} takes it all")
        if spec.stable in table.backends:
            gateway.put_routes(table.all_to(spec.stable))

    def _end(self, model: str, end: RolloutEnd, reason: str) -> None:
        rollout = self._load(model)
        if rollout.shadowed:  # nothing to pair any more
            self._retrying(lambda: self._clear_mirror(model), rollout.spec, "stop mirroring")

        def finish(rollout: ManagedRollout) -> None:
            rollout.ended_in = rollout.stage
            rollout.stage, rollout.end, rollout.reason = Stage.ENDED, end, reason
            rollout.paused_by = None
            if rollout.canary is None:
                rollout.canary = load_state(self.home.files.rollout(model))
        rollout = self._update(model, finish)
        self.log(f"Rollout of {rollout.spec.canary}: {end.value} ({reason})")

    def _clear_mirror(self, model: str) -> None:
        try:
            self._gateway(model).clear_mirror()
        except GatewayAdminError as error:
            if error.retryable:
                raise  # a table that is gone has no mirror left to clear

    def _retrying(self, action: Callable[[], T], spec: RolloutSpec, what: str) -> T:
        """A side effect tried again while it fails transiently (the registry's SQLite file
        locked, the gateway busy), up to the policy's progress deadline."""
        deadline = self.clock() + spec.canary_policy.progress_deadline_seconds
        while True:
            try:
                return action()
            except Exception as error:  # noqa: BLE001 - classified below
                if isinstance(error, (RolloutConflict, RouteChangeRefused)) or (
                        isinstance(error, GatewayAdminError) and not error.retryable) or self.clock() > deadline:
                    raise
                if not _transient(error):
                    self.log(f"Could not {what} ({type(error).__name__}: {error}); trying again")
            if self._stopping.is_set():
                raise _PlaneStopping()
            self._sleep(1.0)

    # ---- records ---------------------------------------------------------------------------

    def _read(self, path) -> ManagedRollout | None:
        saved = read_json(path)
        return None if saved is None else ManagedRollout.model_validate(saved)

    def _load(self, model: str) -> ManagedRollout | None:
        return self._read(self.home.files.managed_rollout(model))

    def _save(self, rollout: ManagedRollout) -> None:
        write_atomic(self.home.files.managed_rollout(rollout.spec.model), rollout.model_dump_json(indent=2))

    def _update(self, model: str, change: Callable[[ManagedRollout], None]) -> ManagedRollout:
        """Read, change, write under the lock: the rollout's thread and operators' commands
        change the same record."""
        with self._lock:
            rollout = self._load(model)
            change(rollout)
            self._save(rollout)
            return rollout

    def _view(self, rollout: ManagedRollout) -> dict:
        if rollout.running and rollout.stage is Stage.CANARY:
            live = load_state(self.home.files.rollout(rollout.spec.model))
            if live is not None and (live.stable, live.canary) == (rollout.spec.stable, rollout.spec.canary):
                rollout = rollout.model_copy(update={"canary": live})
        return {**rollout.model_dump(mode="json"), "description": rollout.describe(), "progress": rollout.progress()}
