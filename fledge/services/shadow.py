"""The shadow step's evidence: mirrored pairs read from the gateway, scored, and probes sent.

The gateway mirrors and keeps raw pairs (serving.gateway.mirror); this module turns them into
`ScoredPair`s for serving.canary.paired: each answer through the answer scorer (refused or
not), each prompt through the prompt scorer where the policy names a guard model, probes marked
right or wrong. Text is replaced by sha256 unless the policy allows raw text. A `Prober` sends
the policy's share of probes through the gateway's admin API while a step runs.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from typing import Callable

from evals.probes import Probe, load_probes, probe_answered_right
from evals.scorers import AnswerScorer, GuardModel, PromptScorer, RefusalDetector, last_question
from fledge.core.policy import ShadowPolicy
from serving.canary.paired import PairSide, ScoredPair
from serving.gateway.client import GatewayAdmin

Log = Callable[[str], None]


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def request_text(pair: dict) -> str:
    """The user's request as a prompt scorer should read it: a chat's last user message, a
    completion's last `Q:` turn (the zoo's format), else the whole prompt."""
    prompt = pair["prompt"]
    if pair.get("path", "").startswith("chat"):
        try:
            messages = json.loads(prompt) or []
            users = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            return str(users[-1]) if users else prompt
        except ValueError:
            return prompt
    return last_question(prompt)


class PairScorer:
    """Scores raw pairs (dicts from `GatewayAdmin.pairs`); keeps every scored pair, by number."""

    def __init__(self, policy: ShadowPolicy, answer_scorer: AnswerScorer | None = None,
                 prompt_scorer: PromptScorer | None = None, probes: list[Probe] | None = None):
        self.policy = policy
        self.answers = answer_scorer or RefusalDetector()
        self.prompts = prompt_scorer if prompt_scorer is not None else (GuardModel(policy.guard) if policy.guard else None)
        self.probes = {p.id: p for p in (probes if probes is not None else
                                         (load_probes(policy.probe_set) if policy.probe_share > 0 else []))}
        self.scored: dict[int, ScoredPair] = {}

    def _side(self, raw: dict, prompt: str, probe: Probe | None) -> PairSide:
        text = raw.get("text")
        answered = raw["status"] < 400 and text is not None
        refused = self.answers.refused(prompt, text) if answered else None
        correct = probe_answered_right(probe, text, bool(refused)) if answered and probe is not None else None
        return PairSide(version=raw["version"], status=raw["status"], latency_s=raw.get("latency_s"),
                        output_tokens=raw.get("output_tokens") or 0,
                        answer_sha256=sha256(text) if text is not None else None,
                        answer_text=text if self.policy.store_raw_text else None, refused=refused, correct=correct)

    def add(self, raw_pairs: list[dict]) -> list[ScoredPair]:
        """Score the pairs not scored yet; returns the new ones."""
        fresh = [raw for raw in raw_pairs if raw["seq"] not in self.scored]
        requests = {raw["seq"]: request_text(raw) for raw in fresh}
        user_prompts = [requests[raw["seq"]] for raw in fresh if not raw.get("probe")]
        labels = iter(self.prompts.harmful(user_prompts) if self.prompts is not None and user_prompts else [])
        new = []
        for raw in fresh:
            probe = self.probes.get((raw.get("probe") or {}).get("id", "")) if raw.get("probe") else None
            if probe is not None:
                harmful, source = probe.kind == "red-team", "probe"
            else:
                harmful = next(labels, None) if self.prompts is not None and not raw.get("probe") else None
                source = "guard" if harmful is not None else None
            prompt = requests[raw["seq"]]
            pair = ScoredPair(
                seq=raw["seq"], at=raw["at"], prompt_sha256=sha256(raw["prompt"]),
                prompt_text=raw["prompt"] if self.policy.store_raw_text else None,
                deterministic=bool(raw.get("deterministic")), probe=probe.kind if probe else None,
                harmful=harmful, label_source=source,
                baseline=self._side(raw["baseline"], prompt, probe), candidate=self._side(raw["candidate"], prompt, probe))
            self.scored[pair.seq] = pair
            new.append(pair)
        return new

    def pairs(self, after: int = 0) -> list[ScoredPair]:
        return [p for seq, p in sorted(self.scored.items()) if seq > after]


class Prober:
    """Sends probes through the gateway while a step runs: one for every `1 / probe_share`
    live requests the gateway saw (its observation sequence counts them), in a shuffled order
    that cycles through the set, each to both sides of the model's mirror."""

    def __init__(self, admin: GatewayAdmin, policy: ShadowPolicy, probes: list[Probe], max_tokens: int = 16,
                 seed: int = 0, interval_s: float = 0.5):
        self.admin, self.policy, self.max_tokens, self.interval_s = admin, policy, max_tokens, interval_s
        self.order = list(probes)
        random.Random(seed).shuffle(self.order)
        self.sent = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        start = self.admin.sequence()
        while not self._stop.wait(self.interval_s):
            try:
                users = self.admin.sequence() - start
                while self.order and self.sent < users * self.policy.probe_share and not self._stop.is_set():
                    probe = self.order[self.sent % len(self.order)]
                    request = {"prompt": probe.prompt, "max_tokens": self.max_tokens, "temperature": 0.0}
                    if self.admin.probe(request, {"id": probe.id, "kind": probe.kind}) is None:
                        break  # the mirror's backends are busy: try again at the next interval
                    self.sent += 1
            except Exception:  # noqa: BLE001 - a gateway that does not answer now may answer at the next interval
                time.sleep(self.interval_s)

    def start(self) -> "Prober":
        if self.policy.probe_share > 0 and self.order:
            self._thread = threading.Thread(target=self._run, name="fledge-prober", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
