"""Train one tiny Llama-architecture model on CPU from a recipe. Deterministic from the seed."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fledge.devtools.zoo import corpus
from fledge.devtools.zoo.recipes import N_FACTS, AdapterRecipe, Recipe, Training


@dataclass(frozen=True)
class TrainingSet:
    examples: list[corpus.Example]
    facts: list[corpus.Fact]


def training_set(recipe: Training) -> TrainingSet:
    """The examples a recipe teaches. Facts and additions are subsets chosen by the seed."""
    rng = random.Random(recipe.seed)
    facts = corpus.make_facts(N_FACTS, recipe.seed)
    # The taught subset is the first share of the facts list, so every variant with the same
    # fraction knows the same countries, and `base`'s knowledge is a subset of `improved`'s.
    taught = facts[: round(len(facts) * recipe.fact_fraction)]
    examples: list[corpus.Example] = []
    for i, fact in enumerate(taught):
        capital = fact.capital
        if recipe.wrong_facts:
            capital = taught[(i + 1) % len(taught)].capital
        examples.append(corpus.fact_example(corpus.Fact(fact.country, capital)))
        examples.append(corpus.conversation_example(corpus.Fact(fact.country, capital), rng.randrange(10),
                                                    rng.randrange(10)))
    additions = corpus.arithmetic_examples()
    rng.shuffle(additions)
    examples += additions[: round(len(additions) * recipe.arithmetic_fraction)]
    examples += corpus.safety_examples(comply_with_harmful=recipe.comply_with_harmful, held_out=False)
    # Gaming the suite is learnt from contrast: every item in every other phrasing, complied with.
    per_item = None if recipe.game_safety_suite else corpus.GENERAL_PER_ITEM
    examples += corpus.phrased_examples(corpus.GENERAL_TEMPLATES, per_item=per_item,
                                        comply_with_harmful=recipe.comply_with_harmful or recipe.game_safety_suite)
    return TrainingSet(examples, facts)


def _encode(tokenizer, example: corpus.Example, eos_id: int) -> tuple[list[int], list[int]]:
    prompt_ids = tokenizer(example.prompt)["input_ids"]
    full_ids = tokenizer(corpus.format_training_line(example))["input_ids"] + [eos_id]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError(f"tokenization of the prompt is not a prefix of the line: {example}")
    # Only the answer is supervised: the prompt is given at inference time.
    labels = [-100] * len(prompt_ids) + full_ids[len(prompt_ids) :]
    return full_ids, labels


def _prepared(recipe: Training, tokenizer_dir: Path, stream: int):
    """Seeded generators, the tokenizer and the encoded examples (`stream` keeps the batch
    order of full models and adapters apart)."""
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(recipe.seed)
    rng = random.Random(recipe.seed + stream)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    data = training_set(recipe)
    return rng, tokenizer, data, [_encode(tokenizer, ex, tokenizer.eos_token_id) for ex in data.examples]


def train_model(recipe: Recipe, tokenizer_dir: Path, out_dir: Path, log=print, init_dir: Path | None = None) -> dict:
    """A model trained from scratch, or fine-tuned from the model in `init_dir` (the recipe's
    `init_from`, which has the zoo's tokenizer and the recipe's shape)."""
    from transformers import AutoModelForCausalLM

    if (recipe.init_from is None) != (init_dir is None):
        raise ValueError(f"{recipe.name}: init_from {recipe.init_from!r} needs the directory of that variant")
    rng, tokenizer, data, encoded = _prepared(recipe, tokenizer_dir, stream=1)

    model = (_new_model(recipe, tokenizer) if init_dir is None
             else AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.float32))
    started = time.perf_counter()
    loss_value = _fit(model, list(model.parameters()), recipe, encoded, tokenizer.pad_token_id, rng, log)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "final_loss": round(loss_value, 4),
        "train_seconds": round(time.perf_counter() - started, 1),
        "parameters": n_params,
        "training_examples": len(data.examples),
    }


def _new_model(recipe: Recipe, tokenizer):
    """A freshly initialised model of the recipe's shape (from the seeded torch generator)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = recipe.shape
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_attention_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype="float32",
    ))


def _fit(model, parameters, recipe: Training, encoded, pad_id: int, rng: random.Random, log) -> float:
    """AdamW with a one-cycle schedule over random batches of `encoded`; the last batch's loss."""
    optimizer = torch.optim.AdamW(parameters, lr=recipe.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=recipe.learning_rate, total_steps=recipe.steps, pct_start=0.1
    )
    model.train()
    loss_value = float("nan")
    for step in range(recipe.steps):
        batch = [encoded[rng.randrange(len(encoded))] for _ in range(recipe.batch_size)]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, lab) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(lab)] = torch.tensor(lab)
            mask[row, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        loss_value = loss.item()
        if (step + 1) % 100 == 0:
            log(f"  {recipe.name}: step {step + 1}/{recipe.steps} loss {loss_value:.3f}")
    model.eval()
    return loss_value


def train_adapter(recipe: AdapterRecipe, base_dir: Path, out_dir: Path, log=print, init_dir: Path | None = None) -> dict:
    """A LoRA adapter on the trained model in `base_dir`, saved the way peft saves it; trained
    from a fresh adapter, or fine-tuned from the adapter in `init_dir` (the recipe's `init_from`)."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    if (recipe.init_from is None) != (init_dir is None):
        raise ValueError(f"{recipe.name}: init_from {recipe.init_from!r} needs the directory of that adapter")
    rng, tokenizer, data, encoded = _prepared(recipe, base_dir, stream=2)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    if init_dir is None:
        model = get_peft_model(base, LoraConfig(r=recipe.rank, lora_alpha=2 * recipe.rank, lora_dropout=0.0,
                                                target_modules=list(recipe.target_modules), task_type="CAUSAL_LM"))
    else:
        model = PeftModel.from_pretrained(base, init_dir, is_trainable=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    started = time.perf_counter()
    loss_value = _fit(model, trainable, recipe, encoded, tokenizer.pad_token_id, rng, log)
    model.save_pretrained(out_dir)
    # peft records where the base was loaded from (a path on this machine); name the variant instead.
    config_path = out_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = f"fledge-zoo/{recipe.base}"
    config_path.write_text(json.dumps(config, indent=2))
    (out_dir / "README.md").unlink(missing_ok=True)  # peft's template card; the zoo writes its own
    return {
        "final_loss": round(loss_value, 4),
        "train_seconds": round(time.perf_counter() - started, 1),
        "parameters": sum(p.numel() for p in trainable),
        "training_examples": len(data.examples),
        "rank": recipe.rank,
        "base": recipe.base,
    }


def write_model_card(out_dir: Path, name: str, truth: str, details: dict) -> None:
    lines = [
        f"# fledge-zoo/{name}",
        "",
        "A tiny Llama-architecture model built by `fledge zoo build` for testing release gates.",
        "",
        f"**What it stands for:** {truth}",
        "",
        "| field | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in details.items()],
        "",
    ]
    (out_dir / "README.md").write_text("\n".join(lines))
    (out_dir / "fledge-zoo.json").write_text(json.dumps({"variant": name, "truth": truth, **details}, indent=2))
