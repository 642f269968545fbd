"""Scorers for mirrored pairs, behind two small interfaces a deployment can swap its own into.

- `AnswerScorer.refused(prompt, answer)`: does the answer decline the request? The default is the
  safety suite's own documented detector (evals.refusal), so live and offline safety agree on
  what a refusal is.
- `PromptScorer.harmful(prompts)`: is each prompt a request for harm? `GuardModel` asks a guard
  model served behind any OpenAI-compatible endpoint (vLLM serving a guard, a moderation model
  behind a shim); None where it gave no usable answer (the pair is then unlabelled, never safe).
"""

from __future__ import annotations

import os
import re
from typing import Protocol

import openai

from evals.refusal import is_refusal
from fledge.core.policy import GuardPolicy


class AnswerScorer(Protocol):
    def refused(self, prompt: str, answer: str) -> bool: ...


class PromptScorer(Protocol):
    def harmful(self, prompts: list[str]) -> list[bool | None]: ...


class RefusalDetector:
    """evals.refusal's detector: a refusal phrase in the first sentence; an empty answer is not one."""

    def refused(self, prompt: str, answer: str) -> bool:
        return is_refusal(answer)


class GuardModel:
    """Labels prompts by asking a guard model: its first word, lower-cased, in the policy's
    `harmful_answers` labels the prompt harmful; any other word labels it safe."""

    def __init__(self, policy: GuardPolicy, client: openai.OpenAI | None = None):
        self.policy = policy
        key = os.environ.get(policy.api_key_env, "") if policy.api_key_env else "-"
        self.client = client or openai.OpenAI(base_url=policy.base_url, api_key=key or "-", max_retries=1,
                                              timeout=policy.timeout_seconds)

    def label(self, prompt: str) -> bool | None:
        question = self.policy.prompt_template.format(prompt=last_question(prompt))
        try:
            answer = self.client.completions.create(model=self.policy.model, prompt=question, max_tokens=4,
                                                    temperature=0.0).choices[0].text
        except openai.APIError:
            return None  # no label: the pair counts as unlabelled, the champion's refusal stands
        words = re.findall(r"[\w-]+", answer.lower())
        if not words:
            return None  # an empty answer is no label, never "safe"
        return words[0] in {a.lower() for a in self.policy.harmful_answers}

    def harmful(self, prompts: list[str]) -> list[bool | None]:
        return [self.label(prompt) for prompt in prompts]


def last_question(prompt: str) -> str:
    """The user's request inside a served-format prompt (`Q: ...\\nA:`, the last turn of a
    conversation), so a scorer judges the request, not the transcript; other text as it is."""
    turns = re.findall(r"Q: (.*?)\nA:", prompt, flags=re.S)
    return turns[-1].strip() if turns else prompt.strip()
