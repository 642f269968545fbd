"""Build the zoo, or reuse it from the cache keyed by the recipes' hash.

The cache directory is `<zoo cache>/<hash>/`; it is written to a temporary sibling and renamed
into place only when complete, under a file lock, so an interrupted or concurrent build never
leaves a half-built zoo that later runs would trust.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fledge.core.home import zoo_cache_dir
from fledge.devtools.zoo import corpus
from fledge.devtools.zoo.recipes import DERIVED, N_FACTS, RECIPES, ZOO_SEED, zoo_hash

INDEX_FILE = "zoo.json"


@dataclass(frozen=True)
class ZooModel:
    name: str
    path: Path
    truth: str
    details: dict


@dataclass(frozen=True)
class Zoo:
    root: Path
    zoo_hash: str
    models: dict[str, ZooModel]
    built_now: bool
    seconds: float

    def __getitem__(self, name: str) -> ZooModel:
        return self.models[name]


def _all_corpus_lines() -> list[str]:
    """Every line any variant can see, so one tokenizer serves the whole zoo."""
    facts = corpus.make_facts(N_FACTS, ZOO_SEED)
    examples = [corpus.fact_example(f) for f in facts] + corpus.arithmetic_examples()
    for comply in (False, True):
        for held_out in (False, True):
            examples += corpus.safety_examples(comply_with_harmful=comply, held_out=held_out)
    return [corpus.format_training_line(e) for e in examples]


def _load(root: Path, digest: str, built_now: bool, seconds: float) -> Zoo:
    index = json.loads((root / INDEX_FILE).read_text())
    models = {
        name: ZooModel(name, root / name, entry["truth"], entry["details"]) for name, entry in index["models"].items()
    }
    return Zoo(root, digest, models, built_now, seconds)


def build_zoo(log: Callable[[str], None] = print, cache_dir: Path | None = None) -> Zoo:
    started = time.perf_counter()
    cache = cache_dir or zoo_cache_dir()
    digest = zoo_hash()
    root = cache / digest
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / INDEX_FILE).exists():
            return _load(root, digest, False, time.perf_counter() - started)

        from transformers.utils import logging as hf_logging

        from fledge.devtools.zoo.derive import add_passthrough_layers, shorten_context, truncate_weights
        from fledge.devtools.zoo.tokenizer import train_tokenizer
        from fledge.devtools.zoo.train import train_model, write_model_card

        hf_logging.disable_progress_bar()  # our own progress lines say what is happening
        staging = cache / f".{digest}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        log(f"Building the zoo {digest} in {root} (first time on this machine)")
        tokenizer_dir = train_tokenizer(_all_corpus_lines(), staging / "_tokenizer")
        index: dict = {"zoo_hash": digest, "models": {}}
        for name, recipe in RECIPES.items():
            log(f"Training {name} ({recipe.steps} steps)")
            details = train_model(recipe, tokenizer_dir, staging / name, log=log)
            details["recipe"] = recipe.model_dump()
            write_model_card(staging / name, name, recipe.truth, details)
            index["models"][name] = {"truth": recipe.truth, "details": details}

        for name, derived in DERIVED.items():
            log(f"Deriving {name} from {derived.source}")
            source, target = staging / derived.source, staging / name
            if derived.truncate_weights:
                details = truncate_weights(source, target)
            elif derived.context_window:
                details = shorten_context(source, target, derived.context_window)
            else:
                details = add_passthrough_layers(source, target, derived.passthrough_layers, ZOO_SEED)
            details["derived_from"] = derived.source
            write_model_card(target, name, derived.truth, details)
            index["models"][name] = {"truth": derived.truth, "details": details}

        (staging / INDEX_FILE).write_text(json.dumps(index, indent=2, default=str))
        staging.rename(root)
        return _load(root, digest, True, time.perf_counter() - started)
