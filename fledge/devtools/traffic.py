"""Synthetic users for the demo and the end-to-end tests: requests through the gateway with the
openai SDK, as client applications send them.

Production traffic is not the evaluation set, so none of these prompts comes from it: users ask
in phrasings of their own (fledge.devtools.zoo.corpus.USER_TEMPLATES for requests that look
harmful or nearly so; their own wording for task questions), which no zoo model was trained on
and neither the safety suite nor the red-team probes use. The mix (`TRAFFIC_MIX`):
- task questions, a third of them as chat messages;
- conversations: several earlier turns before the question, longer than any evaluation prompt,
  which is what a candidate with a shorter context window fails on;
- benign requests that look like harmful ones ("a bath bomb"), and harmful requests;
- most requests greedy (temperature 0), some sampled (temperature 0.8), most streamed.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import openai

from fledge.devtools.zoo import corpus
from fledge.devtools.zoo.recipes import N_FACTS, ZOO_SEED

# Share of requests of each kind; the rest are task questions.
TRAFFIC_MIX = {"conversation": 0.30, "benign look-alike": 0.15, "harmful": 0.15}
SAMPLED_SHARE = 0.2  # requests at temperature 0.8; the others are greedy
CHAT_SHARE = 0.3


def _task_questions() -> list[str]:
    """Capitals and sums asked the way users ask, not the way the evaluation sets do."""
    facts = corpus.make_facts(N_FACTS, ZOO_SEED)
    questions = [f"what's the capital of {f.country}" for f in facts]
    questions += [f"what do you get when you add {a} and {b}?" for a in range(10) for b in range(10)]
    return questions


def _earlier_turns() -> list[str]:
    """Earlier turns of users' conversations: their questions and the answers they got."""
    facts = corpus.make_facts(N_FACTS, ZOO_SEED)
    turns = [f"Q: Which city is the capital of {f.country}?\nA: {f.capital}." for f in facts]
    return turns + [f"Q: Can you add {a} and {b}?\nA: {a + b}." for a in range(10) for b in range(10)]


@dataclass(frozen=True)
class UserRequest:
    kind: str
    question: str  # the user's last question
    history: str = ""  # earlier turns of the conversation, in the served format

    def prompt(self) -> str:
        return f"{self.history}\n{corpus.QUESTION_PREFIX}{self.question}{corpus.ANSWER_PREFIX}".lstrip("\n")


def user_requests(rng: random.Random, count: int) -> list[UserRequest]:
    tasks = _task_questions()
    turns = _earlier_turns()
    harmful = [e.question for e in corpus.phrased_examples(corpus.USER_TEMPLATES, comply_with_harmful=False)
               if e.kind == "harmful"]
    benign = [e.question for e in corpus.phrased_examples(corpus.USER_TEMPLATES, comply_with_harmful=False)
              if e.kind == "benign"]
    requests = []
    for _ in range(count):
        draw = rng.random()
        if draw < TRAFFIC_MIX["conversation"]:
            requests.append(UserRequest("conversation", rng.choice(tasks), "\n".join(rng.sample(turns, 5))))
        elif draw < TRAFFIC_MIX["conversation"] + TRAFFIC_MIX["benign look-alike"]:
            requests.append(UserRequest("benign look-alike", rng.choice(benign)))
        elif draw < sum(TRAFFIC_MIX.values()):
            requests.append(UserRequest("harmful", rng.choice(harmful)))
        else:
            requests.append(UserRequest("task", rng.choice(tasks)))
    return requests


@dataclass
class TrafficStats:
    sent: int = 0
    ok: int = 0
    failed: Counter = field(default_factory=Counter)  # by error kind
    by_kind: Counter = field(default_factory=Counter)
    answers: list = field(default_factory=list)  # (x-fledge-version, text) of every answer, for tests

    def as_text(self) -> str:
        failures = ", ".join(f"{n} {kind}" for kind, n in self.failed.most_common()) or "none"
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.by_kind.most_common())
        return f"{self.sent} requests ({kinds}), {self.ok} answered, failures: {failures}"


class SyntheticUsers:
    """`users` threads, each sending one request after another (with a short think time) to
    the gateway under the public model name, until stopped."""

    def __init__(self, gateway_url: str, model: str, users: int = 2, max_tokens: int = 8,
                 think_s: float = 0.4, seed: int = 0, api_key: str = "fledge-demo", keep_answers: bool = False):
        self.base_url = gateway_url.rstrip("/") + "/v1"
        self.model, self.users, self.max_tokens, self.think_s = model, users, max_tokens, think_s
        self.api_key, self.seed, self.keep_answers = api_key, seed, keep_answers
        self.stats = TrafficStats()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _send(self, client: openai.OpenAI, request: UserRequest, rng: random.Random, user: str) -> tuple[str, str]:
        """One request as an application sends it; returns (version that answered, text)."""
        temperature = 0.8 if rng.random() < SAMPLED_SHARE else 0.0
        common = dict(model=self.model, max_tokens=self.max_tokens, temperature=temperature, user=user)
        if request.kind != "conversation" and rng.random() < CHAT_SHARE:
            response = client.chat.completions.with_raw_response.create(
                messages=[{"role": "user", "content": request.question}], **common)
            return response.headers.get("x-fledge-version", ""), response.parse().choices[0].message.content or ""
        if rng.random() < 0.25:  # not streamed
            response = client.completions.with_raw_response.create(prompt=request.prompt(), **common)
            return response.headers.get("x-fledge-version", ""), response.parse().choices[0].text
        with client.completions.with_streaming_response.create(prompt=request.prompt(), stream=True, **common) as response:
            version = response.headers.get("x-fledge-version", "")
            text = "".join(chunk.choices[0].text for chunk in response.parse() if chunk.choices)
        return version, text

    def _user(self, index: int) -> None:
        rng = random.Random(self.seed * 1000 + index)
        client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=30.0)
        while not self._stop.is_set():
            request = user_requests(rng, 1)[0]
            answer = None
            try:
                answer = self._send(client, request, rng, f"user-{index}-{rng.randrange(1000)}")
                outcome = None
            except openai.APIStatusError as error:
                outcome = f"HTTP {error.status_code}"
            except openai.APIError as error:
                outcome = type(error).__name__
            with self._lock:
                self.stats.sent += 1
                self.stats.by_kind[request.kind] += 1
                if outcome is None:
                    self.stats.ok += 1
                    if self.keep_answers:
                        self.stats.answers.append(answer)
                else:
                    self.stats.failed[outcome] += 1
            if outcome == "APIConnectionError":
                time.sleep(0.5)  # the gateway is down: do not spin
            self._stop.wait(self.think_s)

    def start(self) -> "SyntheticUsers":
        for index in range(self.users):
            thread = threading.Thread(target=self._user, args=(index,), name=f"synthetic-user-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> TrafficStats:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=35)
        return self.stats

    def __enter__(self) -> "SyntheticUsers":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
