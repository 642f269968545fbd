"""Synthetic users for the demo and the end-to-end tests: streamed completions through the
gateway with the openai SDK, as a client application would send them.

Production traffic is not the evaluation set: a third of these requests carry a conversation
history (several earlier turns before the question), which is longer than any evaluation
prompt. That is what real users do, and what a candidate with a shorter context window fails on.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import openai

from evals.datasets import QUESTION_DATASETS, dataset_path, read_prompts


@dataclass
class TrafficStats:
    sent: int = 0
    ok: int = 0
    failed: Counter = field(default_factory=Counter)  # by error kind

    def as_text(self) -> str:
        failures = ", ".join(f"{n} {kind}" for kind, n in self.failed.most_common()) or "none"
        return f"{self.sent} requests, {self.ok} answered, failures: {failures}"


def _answered_turns() -> list[str]:
    """Earlier turns of a conversation: questions of the shipped data with their answers."""
    import json

    turns = []
    for name in QUESTION_DATASETS:
        for line in dataset_path(name).read_text().splitlines():
            row = json.loads(line)
            answer = row["choices"][row["answer"]] if "choices" in row else row["answer"]
            turns.append(f"Q: {row['question']}\nA: {answer}.")
    return turns


def conversation_prompts(rng: random.Random, questions: list[str], count: int, turns: int = 5) -> list[str]:
    history = _answered_turns()
    return ["\n".join(rng.sample(history, turns)) + "\n" + rng.choice(questions) for _ in range(count)]


class SyntheticUsers:
    """`users` threads, each sending one streamed request after another (with a short think
    time) to the gateway under the public model name, until stopped."""

    def __init__(self, gateway_url: str, model: str, users: int = 2, max_tokens: int = 8,
                 think_s: float = 0.4, seed: int = 0, api_key: str = "fledge-demo"):
        self.base_url = gateway_url.rstrip("/") + "/v1"
        self.model, self.users, self.max_tokens, self.think_s = model, users, max_tokens, think_s
        self.api_key = api_key
        rng = random.Random(seed)
        questions = read_prompts(list(QUESTION_DATASETS))
        self.prompts = questions + conversation_prompts(rng, questions, len(questions) // 2)
        self.stats = TrafficStats()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _user(self, index: int) -> None:
        rng = random.Random(index)
        client = openai.OpenAI(base_url=self.base_url, api_key=self.api_key, max_retries=0, timeout=30.0)
        while not self._stop.is_set():
            try:
                stream = client.completions.create(
                    model=self.model, prompt=rng.choice(self.prompts), max_tokens=self.max_tokens,
                    temperature=0.0, stream=True, user=f"user-{index}-{rng.randrange(1000)}",
                )
                for _ in stream:
                    pass
                outcome = None
            except openai.APIStatusError as error:
                outcome = f"HTTP {error.status_code}"
            except openai.APIError as error:
                outcome = type(error).__name__
            with self._lock:
                self.stats.sent += 1
                if outcome is None:
                    self.stats.ok += 1
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
