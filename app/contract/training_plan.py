"""How a run turns its dataset and config into training steps. Pure, shared by dry_run and the trainer,
so the plan a dry run reports is the plan the trainer follows."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from app.contract.prompt_format import PlainFormat, PromptFormat, TemplateError, format_for


class PlanError(ValueError):
    """The run cannot be planned (e.g. its tokenizer cannot be loaded)."""


@dataclass(frozen=True)
class EncodedExample:
    tokens: list[int]  # padded to max_seq_length
    mask: list[int]  # 1 where the loss is taken (response tokens and EOS)
    length: int  # tokens before truncation
    truncated: bool


def encode_example(tokenizer, prompt: str, response: str, max_seq_length: int, pad: bool = True,
                   prompt_format: PromptFormat | None = None) -> EncodedExample:
    """Tokenize one example in its prompt format, cut it to max_seq_length and pad it (unless only counting);
    the mask covers the response only, so the model learns answers, not prompts."""
    prompt_text, response_text = (prompt_format or PlainFormat()).example(prompt, response)
    head = ([tokenizer.bos_id] if tokenizer.bos_id is not None else []) + tokenizer.encode(prompt_text)
    tail = tokenizer.encode(response_text) + [tokenizer.eos_id]
    tokens, mask = head + tail, [0] * len(head) + [1] * len(tail)
    length = len(tokens)
    tokens, mask = tokens[:max_seq_length], mask[:max_seq_length]
    padding = max_seq_length - len(tokens) if pad else 0
    return EncodedExample(tokens + [tokenizer.pad_id] * padding, mask + [0] * padding, length,
                          length > max_seq_length)


def eval_count(num_examples: int, eval_fraction: float) -> int:
    """How many examples the eval split holds (at least one when asked for, never all)."""
    if eval_fraction <= 0 or num_examples < 2:
        return 0
    return min(num_examples - 1, max(1, round(num_examples * eval_fraction)))


def split_indices(num_examples: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, eval) example indices: a seeded shuffle, the eval split taken first."""
    order = list(range(num_examples))
    random.Random(seed).shuffle(order)
    n_eval = eval_count(num_examples, eval_fraction)
    return order[n_eval:], order[:n_eval]


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    """Full batches per epoch; the remainder is dropped so every step has the same shape."""
    return num_train // batch_size


def total_steps(config: dict[str, Any], num_train: int) -> int:
    steps = config["num_epochs"] * steps_per_epoch(num_train, config["batch_size"])
    return min(steps, config["max_steps"]) if config.get("max_steps") else steps


def eval_batch_size(num_eval: int, batch_size: int, shards: int = 1) -> int:
    """The eval batch: the train batch, or the whole split when smaller, cut to a multiple of the devices the
    batch is split over (0: too few held-out examples to give each one its share, so no eval loss)."""
    size = min(batch_size, num_eval)
    return size - size % shards


def _eval_steps(num_eval: int, config: dict[str, Any]) -> int:
    size = eval_batch_size(num_eval, config["batch_size"], (config.get("mesh") or {}).get("fsdp", 1))
    return num_eval // size if size else 0


def scored_count(config: dict[str, Any], num_examples: int, eval_dataset_examples: int | None = None) -> int:
    """How many examples the evaluation scores: the eval dataset's (or the held-out split's), up to
    eval_max_examples."""
    available = eval_dataset_examples if config.get("eval_dataset_key") else eval_count(
        num_examples, config["eval_fraction"])
    return min(config["eval_max_examples"], available or 0)


def notes(config: dict[str, Any], num_examples: int, eval_dataset_examples: int | None = None) -> list[str]:
    """What the run will do that its settings may not lead one to expect (not problems: it can train)."""
    found = []
    num_eval = eval_count(num_examples, config["eval_fraction"])
    steps = total_steps(config, num_examples - num_eval)
    if num_eval and steps and config["eval_every_n_steps"] > steps:
        found.append(f"eval_every_n_steps: {config['eval_every_n_steps']} is more than the {steps} steps, so the "
                     "eval loss is measured only before the first step and after the last")
    asked = config["eval_max_examples"]
    scored = scored_count(config, num_examples, eval_dataset_examples)
    if asked and scored < asked:
        source = f"the eval dataset {config['eval_dataset_key']}" if config.get("eval_dataset_key") else \
            f"the held-out split ({config['eval_fraction']:g} of {num_examples} examples)"
        found.append(f"eval_max_examples: {asked:,} asked, but {source} holds {scored:,}, so {scored:,} "
                     f"{'is' if scored == 1 else 'are'} scored")
    return found


def plan_run(config: dict[str, Any], examples: Sequence[Any], tokenizer=None,
             eval_dataset_examples: int | None = None, devices: list[dict] | None = None) -> dict[str, Any]:
    """What a run would do: split, token counts, steps, the model and its memory beside the `devices` the
    workers report, and every problem that would stop it."""
    from app.contract import memory_plan
    from app.contract.text_tokenizers import load_tokenizer

    if tokenizer is None:
        try:
            tokenizer = load_tokenizer(config["model_id"])
        except Exception as exc:  # a broken checkpoint directory: report it, do not crash the request
            raise PlanError(f"model_id: cannot load the tokenizer: {exc}") from exc
    try:
        fmt = format_for(config)
    except TemplateError as exc:
        raise PlanError(f"prompt_format: {exc}") from exc
    problems: list[str] = []
    n = len(examples)
    if n == 0:
        problems.append("dataset_key: the dataset holds no examples")
    train_idx, eval_idx = split_indices(n, config["eval_fraction"], config["seed"])
    max_len = config["max_seq_length"]
    lengths, over, no_response = [], 0, 0
    for example in examples:
        encoded = encode_example(tokenizer, example.prompt, example.response, max_len, pad=False, prompt_format=fmt)
        lengths.append(encoded.length)
        over += encoded.truncated
        no_response += not any(encoded.mask)
    spe = steps_per_epoch(len(train_idx), config["batch_size"])
    if n and spe == 0:
        problems.append(f"batch_size: {config['batch_size']} is larger than the {len(train_idx)} training examples")
    if n and no_response == n:
        problems.append(f"max_seq_length: {max_len} leaves no response tokens in any example; raise it")
    steps = total_steps(config, len(train_idx))
    if steps and config["warmup_steps"] >= steps:
        problems.append(f"warmup_steps: {config['warmup_steps']} is not below the {steps} total steps")
    model = memory_plan.model_plan(config, tokenizer.vocab_size)
    if devices is not None:
        model["fit"] = memory_plan.fit(model["memory_bytes"]["total"], devices, int(config.get("devices") or 1))
    return {
        "model": model,
        "ok": not problems, "problems": problems,
        "examples": n, "train_examples": len(train_idx), "eval_examples": len(eval_idx),
        "tokens": {"total": sum(lengths), "mean": round(sum(lengths) / n, 1) if n else 0,
                   "max": max(lengths) if lengths else 0},
        "examples_over_max_seq_length": over, "examples_without_response_tokens": no_response,
        "steps_per_epoch": spe, "total_steps": steps,
        "eval_steps_per_pass": _eval_steps(len(eval_idx), config),
        "scored_examples": scored_count(config, n, eval_dataset_examples),
        "notes": notes(config, n, eval_dataset_examples) if n else [],
        "tokenizer_vocab_size": tokenizer.vocab_size, "prompt_format": config.get("prompt_format", "plain"),
        "trainer_config": config,
    }
