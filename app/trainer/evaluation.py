"""Generation and scoring with Tunix's sampler: once before the first step and once after the last.

Each held-out prompt is answered greedily, scored against its reference (`app.contract.scoring`),
and written to predictions.jsonl; progress goes out as protocol events so the page can say
"evaluating 120 of 200". Batches keep one shape (the last is padded), so generation compiles once.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from app.contract import progress_protocol, prompt_format, run_files, scoring
from app.trainer import data as run_data

BATCH_SIZE = 16


@dataclass(frozen=True)
class EvalSet:
    """The examples a run is scored on, and where they came from."""

    examples: list[tuple[str, str]]
    dataset_key: str
    source: str  # "held-out split" or "eval dataset"


class SamplerTokenizer:
    """Our tokenizers in the shape Tunix's TokenizerAdapter asks for (ids as methods).

    Prompts longer than `max_prompt_tokens` keep their end, where the question and the
    separator are: the model was trained to answer right after the separator.
    """

    def __init__(self, tokenizer, max_prompt_tokens: int):
        self._tokenizer, self.max_prompt_tokens = tokenizer, max_prompt_tokens

    def encode(self, text: str, **_kwargs) -> list[int]:
        return self._tokenizer.encode(text)[-self.max_prompt_tokens:]

    def decode(self, ids, **_kwargs) -> str:
        return self._tokenizer.decode([int(i) for i in ids])

    def bos_id(self):
        return self._tokenizer.bos_id

    def eos_id(self) -> int:
        return self._tokenizer.eos_id

    def pad_id(self) -> int:
        return self._tokenizer.pad_id


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def prompt_length_for(tokenizer: SamplerTokenizer, prompts: list[str]) -> int:
    """The padded prompt length a batch is generated at: a power of two, so few shapes compile."""
    return _next_power_of_two(max(len(tokenizer.encode(p)) + 1 for p in prompts))  # +1: the BOS the sampler adds


def make_sampler(model, tokenizer: SamplerTokenizer, model_config, max_prompt_length: int, max_new_tokens: int):
    """Tunix's sampler over `model`, its KV cache sized for prompts of `max_prompt_length` and answers of
    `max_new_tokens`: the one path evaluation and the playground both generate through."""
    from tunix.generate import sampler as tunix_sampler

    cache_config = tunix_sampler.CacheConfig(
        cache_size=max_prompt_length + max_new_tokens, num_layers=model_config.num_layers,
        num_kv_heads=model_config.num_kv_heads, head_dim=model_config.head_dim)
    return tunix_sampler.Sampler(model, tokenizer, cache_config)


def generated_length(tokens, tokenizer: SamplerTokenizer) -> int:
    """Tokens the model generated for one prompt, up to (not counting) its EOS and padding."""
    count = 0
    for token in list(tokens):
        if int(token) in (tokenizer.eos_id(), tokenizer.pad_id()):
            break
        count += 1
    return count


class Evaluator:
    """Answers and scores one eval set; `run(model, phase)` does one pass."""

    def __init__(self, eval_set: EvalSet, tokenizer, model_config, config: dict, run_dir: Path):
        self.model_config = model_config
        self.eval_set, self.run_dir = eval_set, run_dir
        self.max_new_tokens = config["eval_max_new_tokens"]
        self.pattern = scoring.compile_answer_pattern(config["answer_pattern"]) if config.get("answer_pattern") \
            else None
        fmt = prompt_format.format_for(config)  # asked as the model was trained to be asked
        self.prompts = [fmt.prompt(prompt) for prompt, _ in eval_set.examples]
        self.tokenizer = SamplerTokenizer(tokenizer, max_prompt_tokens=config["max_seq_length"])
        self.max_prompt_length = prompt_length_for(self.tokenizer, self.prompts)
        self.batch_size = min(BATCH_SIZE, len(self.prompts))
        self._sampler = None
        self._compiled = False

    def run(self, model, phase: str) -> dict:
        """Generate and score every example with the model as it is now; append to predictions.jsonl."""
        if self._sampler is None:
            self._sampler = make_sampler(model, self.tokenizer, self.model_config, self.max_prompt_length,
                                         self.max_new_tokens)
        else:  # the same compiled sampler, pointed at the trained weights
            from flax import nnx

            self._sampler.transformer_state = nnx.variables(model)
        total = len(self.prompts)
        _drop_phase(self.run_dir / run_files.PREDICTIONS_FILE, phase)  # an earlier attempt's partial pass
        progress_protocol.emit("evaluate", phase=phase, done=0, total=total)
        verdicts, lengths, started, batch_times = [], [], time.monotonic(), []
        compiles = self._compiled is False
        with (self.run_dir / run_files.PREDICTIONS_FILE).open("a", encoding="utf-8") as out:
            for first in range(0, total, self.batch_size):
                batch = self.prompts[first:first + self.batch_size]
                padded = batch + [batch[0]] * (self.batch_size - len(batch))
                batch_started = time.monotonic()
                output = self._sampler(padded, max_generation_steps=self.max_new_tokens,
                                       max_prompt_length=self.max_prompt_length, temperature=0.0)
                batch_times.append(time.monotonic() - batch_started)
                for offset, prompt in enumerate(batch):
                    index = first + offset
                    prediction, reference = output.text[offset], self.eval_set.examples[index][1]
                    generated = generated_length(output.tokens[offset], self.tokenizer)
                    verdict = scoring.judge(prediction, reference, self.pattern)
                    verdicts.append(verdict)
                    lengths.append(generated)
                    out.write(json.dumps({
                        "phase": phase, "index": index, "prompt": self.eval_set.examples[index][0],
                        "reference": reference, "prediction": prediction, "exact_match": verdict.exact,
                        "answer_match": verdict.answer, "generated_tokens": generated}) + "\n")
                progress_protocol.emit("evaluate", phase=phase, done=min(first + self.batch_size, total),
                                       total=total)
        self._compiled = True
        metrics = scoring.summarize(verdicts, lengths, time.monotonic() - started)
        # The first batch of the first pass also traces and compiles generation: say so beside its
        # tokens/s, and leave it out of the batch time the next pass is foreseen with.
        steady = batch_times[1:] if compiles and len(batch_times) > 1 else batch_times
        metrics.update(includes_compilation=compiles, batch_size=self.batch_size,
                       batch_seconds=round(sum(steady) / len(steady), 4) if steady else None)
        progress_protocol.emit("evaluate", phase=phase, done=total, total=total, metrics=metrics)
        return metrics


def _drop_phase(path: Path, phase: str) -> None:
    if not path.exists():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
            if line.strip() and json.loads(line).get("phase") != phase]
    path.write_text("".join(kept), encoding="utf-8")


def eval_set_for(run_dir: Path, config: dict, examples: list[tuple[str, str]], eval_idx: list[int]) -> EvalSet | None:
    """What the run is scored on: the separate eval dataset when it names one, else the held-out split."""
    limit = config["eval_max_examples"]
    if limit == 0:
        return None
    if config.get("eval_dataset_key"):
        chosen = run_data.read_examples(run_dir / run_files.EVAL_DATASET_FILE)[:limit]
        return EvalSet(chosen, config["eval_dataset_key"], "eval dataset") if chosen else None
    chosen = [examples[i] for i in eval_idx[:limit]]
    return EvalSet(chosen, config["dataset_key"], "held-out split") if chosen else None


def load_before(run_dir: Path) -> dict | None:
    """The before-training scores an earlier attempt of this run saved, if any (a resumed run keeps them)."""
    path = run_dir / run_files.EVALUATION_BEFORE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def save_before(run_dir: Path, metrics: dict) -> None:
    path = run_dir / run_files.EVALUATION_BEFORE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(metrics))
    tmp.replace(path)
