"""Build the zoo, or reuse it from the cache keyed by the recipes' hash.

The cache directory is `<zoo cache>/<hash>/`, one folder per variant and an index. Under a
file lock, each variant is written to a temporary sibling, renamed into place, and only then
entered in the index, so an interrupted or concurrent build never leaves a half-built variant
that later runs would trust. A build may ask for some variants only (the demo does): the rest
are built the first time something asks for them.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from fledge.core.home import zoo_cache_dir
from fledge.core.state import write_atomic
from fledge.devtools.zoo import corpus
from fledge.devtools.zoo.recipes import ADAPTERS, DERIVED, N_FACTS, RECIPES, VARIANTS, ZOO_SEED, zoo_hash

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
    examples += [corpus.conversation_example(f, a, a) for f in facts for a in range(10)]
    for comply in (False, True):
        for held_out in (False, True):
            examples += corpus.safety_examples(comply_with_harmful=comply, held_out=held_out)
        examples += corpus.phrased_examples(corpus.GENERAL_TEMPLATES, comply_with_harmful=comply)
    return [corpus.format_training_line(e) for e in examples]


def _read_index(root: Path) -> dict:
    path = root / INDEX_FILE
    return json.loads(path.read_text()) if path.is_file() else {"models": {}}


def _load(root: Path, digest: str, names: list[str], built_now: bool, seconds: float) -> Zoo:
    entries = _read_index(root)["models"]
    models = {name: ZooModel(name, root / name, entries[name]["truth"], entries[name]["details"]) for name in names}
    return Zoo(root, digest, models, built_now, seconds)


def _with_sources(variants: Iterable[str]) -> list[str]:
    """The variants asked for and those they are derived from, in the zoo's order."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"no zoo variant {', '.join(unknown)}; the zoo has {', '.join(VARIANTS)}")
    wanted, more = set(), list(variants)
    while more:  # sources of sources: adapter-unsafe starts from adapter-improved, which needs base
        name = more.pop()
        if name not in wanted:
            wanted.add(name)
            more += _sources(name)
    return [v for v in VARIANTS if v in wanted]


def _sources(name: str) -> list[str]:
    """The variants `name` is built from: a derived variant's source, an adapter's base, a
    fine-tune's starting point. The zoo's order lists every source before what needs it."""
    if name in DERIVED:
        return [DERIVED[name].source]
    recipe = RECIPES.get(name) or ADAPTERS[name]
    return [s for s in (getattr(recipe, "base", None), recipe.init_from) if s]


def build_zoo(log: Callable[[str], None] = print, cache_dir: Path | None = None,
              variants: Iterable[str] | None = None) -> Zoo:
    """The zoo's `variants` (default: all), each trained or derived once per machine and
    cached. Each variant is trained from its own seed, so one built alone is the same file as
    one built with the rest (the demo builds only the four it releases)."""
    started = time.perf_counter()
    cache = cache_dir or zoo_cache_dir()
    digest = zoo_hash()
    root = cache / digest
    names = _with_sources(VARIANTS if variants is None else variants)
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / f".{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        index = _read_index(root)
        missing = [name for name in names if name not in index["models"]]
        if not missing:
            return _load(root, digest, names, False, time.perf_counter() - started)

        from transformers.utils import logging as hf_logging

        from fledge.devtools.zoo.derive import add_passthrough_layers, shorten_context, truncate_weights
        from fledge.devtools.zoo.tokenizer import train_tokenizer
        from fledge.devtools.zoo.train import train_adapter, train_model, write_model_card

        hf_logging.disable_progress_bar()  # our own progress lines say what is happening
        staging = cache / f".{digest}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        root.mkdir(exist_ok=True)
        log(f"Building the zoo {digest} in {root}: {', '.join(missing)} (first time on this machine)")
        tokenizer_dir = root / "_tokenizer"
        if not (tokenizer_dir / "tokenizer.json").is_file():
            train_tokenizer(_all_corpus_lines(), staging / "_tokenizer")
            _move_into(staging / "_tokenizer", tokenizer_dir)
        index = {"zoo_hash": digest, "models": dict(index["models"])}
        for name in missing:
            training = RECIPES.get(name) or ADAPTERS.get(name)
            if training is not None:
                init_dir = root / training.init_from if training.init_from else None
                steps = f"{training.steps} steps{f' from {training.init_from}' if training.init_from else ''}"
            if name in RECIPES:
                log(f"Training {name} ({steps})")
                details = train_model(training, tokenizer_dir, staging / name, log=log, init_dir=init_dir)
                details["recipe"] = training.model_dump()
                truth = training.truth
            elif name in ADAPTERS:
                log(f"Training the LoRA adapter {name} on {training.base} ({steps})")
                details = train_adapter(training, root / training.base, staging / name, log=log, init_dir=init_dir)
                details["recipe"] = training.model_dump()
                truth = training.truth
            else:
                derived = DERIVED[name]
                log(f"Deriving {name} from {derived.source}")
                source, target = root / derived.source, staging / name
                if derived.truncate_weights:
                    details = truncate_weights(source, target)
                elif derived.context_window:
                    details = shorten_context(source, target, derived.context_window)
                else:
                    details = add_passthrough_layers(source, target, derived.passthrough_layers, ZOO_SEED)
                details["derived_from"] = derived.source
                truth = derived.truth
            write_model_card(staging / name, name, truth, details)
            # A variant counts once it is in place and in the index: a build interrupted here
            # leaves at most a directory the next build replaces, never one it trusts.
            _move_into(staging / name, root / name)
            index["models"][name] = {"truth": truth, "details": details}
            write_atomic(root / INDEX_FILE, json.dumps(index, indent=2, default=str))
        shutil.rmtree(staging, ignore_errors=True)
        return _load(root, digest, names, True, time.perf_counter() - started)


def _move_into(source: Path, target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    source.rename(target)
