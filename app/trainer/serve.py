"""The generation server: `python -m app.trainer.serve`, started by a worker for the playground.

It keeps the models it answered with loaded and their samplers compiled (least recently used out, within
a count and a share of the device's memory), reads one request per line on stdin and answers on stdout in
the lines of `app.contract.generation`. A line {"cancel": id} stops that request before its next prompt.
Prompts are asked as the model was trained to be asked and answered through the evaluation's own
sampler path (`app.trainer.evaluation`), so a greedy answer here is the answer evaluation recorded.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, TextIO

from app.contract import generation, prompt_format, run_files
from app.contract.text_tokenizers import load_tokenizer

SAMPLERS_PER_MODEL = 8  # compiled samplers kept per model, one per shape (prompt bucket, answer length, mode)


@dataclass
class Loaded:
    """A model held for the playground: its weights, tokenizer, prompt format and compiled samplers."""

    model: Any
    tokenizer: Any
    format: Any
    bytes: int
    samplers: OrderedDict = field(default_factory=OrderedDict)

    def sampler(self, max_prompt_length: int, max_new_tokens: int, mode: str):
        """The compiled sampler for this shape and sampling mode, and whether it is new (its first call
        compiles it)."""
        from app.trainer import evaluation

        shape = (max_prompt_length, max_new_tokens, mode)
        fresh = shape not in self.samplers
        if fresh:
            if len(self.samplers) >= SAMPLERS_PER_MODEL:
                self.samplers.popitem(last=False)
            self.samplers[shape] = _timed_first_token(evaluation.make_sampler(
                self.model, self.tokenizer, self.model.config, max_prompt_length, max_new_tokens))
        self.samplers.move_to_end(shape)
        return self.samplers[shape], fresh


def _timed_first_token(sampler):
    # Tunix's sampler samples the first token in its prefill and the rest in one compiled loop: waiting for
    # the prefill's result is when the first token exists.
    import jax

    prefill = sampler._compiled_prefill_fn

    def timed(*args, **kwargs):
        state = jax.block_until_ready(prefill(*args, **kwargs))
        sampler.first_token_at = time.monotonic()
        return state

    sampler._compiled_prefill_fn = timed
    sampler.first_token_at = None
    return sampler


def load(spec: dict[str, Any]) -> Loaded:
    """Build the model a spec names: a preset (initialised from seed 0, as a run's default) or a checkpoint."""
    import jax
    from flax import nnx

    from app.trainer import evaluation, model_factory

    model_id = spec["model_id"]
    tokenizer = load_tokenizer(model_id)
    model = model_factory.build_model({"model_id": model_id, "seed": int(spec.get("seed", 0)), "finetune": "full"},
                                      tokenizer.vocab_size)
    fmt = prompt_format.format_for({"prompt_format": spec.get("prompt_format", prompt_format.PLAIN),
                                    "model_id": model_id})
    size = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model)))
    return Loaded(model, evaluation.SamplerTokenizer(tokenizer, int(spec["max_prompt_tokens"])), fmt, int(size))


class Models:
    """The loaded models, least recently used first, within `max_models` and `budget_bytes`."""

    def __init__(self, max_models: int, budget_bytes: int | None):
        self.max_models, self.budget_bytes = max(1, max_models), budget_bytes
        self.held: OrderedDict[str, Loaded] = OrderedDict()

    def get(self, key: str) -> Loaded | None:
        if key in self.held:
            self.held.move_to_end(key)
        return self.held.get(key)

    def room_for(self, incoming_bytes: int = 0) -> list[str]:
        """Evict the least recently used until one more model fits; the keys evicted."""
        evicted = []
        while self.held and (len(self.held) >= self.max_models or (
                self.budget_bytes is not None and self.total() + incoming_bytes > self.budget_bytes)):
            key, _ = self.held.popitem(last=False)
            evicted.append(key)
        return evicted

    def put(self, key: str, loaded: Loaded) -> list[str]:
        """Hold a model just loaded; the others evicted while the memory budget is still exceeded (its size is
        known only now), least recently used first."""
        self.held[key] = loaded
        evicted = []
        while self.budget_bytes is not None and self.total() > self.budget_bytes and len(self.held) > 1:
            oldest = next(iter(self.held))
            del self.held[oldest]
            evicted.append(oldest)
        return evicted

    def total(self) -> int:
        return sum(m.bytes for m in self.held.values())

    def keys(self) -> list[str]:
        return list(self.held)


class Server:
    """Reads requests, answers them one at a time, writes the protocol's lines."""

    def __init__(self, out: TextIO, models: Models):
        self.out, self.models = out, models
        self.requests: queue.Queue = queue.Queue()
        self.cancelled: set[str] = set()
        self.orphaned = False

    def say(self, event: str, **fields: Any) -> None:
        self.out.write(generation.encode_line(event, **fields) + "\n")
        self.out.flush()

    def read(self, stdin: TextIO) -> None:
        """Stdin's lines, in a thread: cancels take effect at once, requests queue up; EOF ends the server."""
        for line in stdin:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and "cancel" in message:
                self.cancelled.add(str(message["cancel"]))
            elif isinstance(message, dict):
                self.requests.put(message)
        # The worker is gone (it closes stdin only when it ends): the request in progress stops too.
        self.orphaned = True
        self.requests.put(None)

    def serve(self) -> None:
        while (request := self.requests.get()) is not None:
            try:
                self.answer(request)
            except Exception as exc:  # one bad request or model must not end the models held for the others
                import traceback

                traceback.print_exc()
                self.say("error", id=request.get("id"), message=f"{type(exc).__name__}: {str(exc)[:500]}",
                         held=self.models.keys())

    def answer(self, request: dict[str, Any]) -> None:
        from app.trainer import evaluation

        rid, spec, settings = str(request["id"]), request["model"], request["settings"]
        started = time.monotonic()
        loaded = self.models.get(spec["key"])
        if loaded is None:
            self.say("loading", id=rid, key=spec["key"])
            evicted = self.models.room_for(int(spec.get("size_bytes") or 0))
            loaded = load(spec)
            evicted += self.models.put(spec["key"], loaded)
            self.say("loaded", id=rid, key=spec["key"], seconds=round(time.monotonic() - started, 3),
                     bytes=loaded.bytes, evicted=evicted)
        arguments = generation.sampler_arguments(settings)
        max_new = int(settings["max_new_tokens"])
        for index, prompt in enumerate(request["prompts"]):
            if self.orphaned:
                return
            if rid in self.cancelled:
                self.cancelled.discard(rid)
                self.say("cancelled", id=rid, held=self.models.keys())
                return
            text = loaded.format.prompt(prompt)
            length = evaluation.prompt_length_for(loaded.tokenizer, [text])
            sampler, compiles = loaded.sampler(length, max_new, "sample" if settings["temperature"] else "greedy")
            asked = time.monotonic()
            output = sampler([text], max_generation_steps=max_new, max_prompt_length=length, **arguments)
            ended = time.monotonic()
            tokens = evaluation.generated_length(output.tokens[0], loaded.tokenizer)
            seconds = ended - asked
            # The first answer's wait includes loading and compiling, as a cold model's user waits it.
            self.say("answer", id=rid, index=index, text=output.text[0], tokens=tokens,
                     ttft_seconds=round(sampler.first_token_at - (started if index == 0 else asked), 4),
                     seconds=round(seconds, 4), tokens_per_second=round(tokens / seconds, 2) if seconds > 0 else None,
                     compiled=compiles)
        self.cancelled.discard(rid)
        self.say("done", id=rid, held=self.models.keys())


def _memory_bytes(reported: int | None) -> int | None:
    """The device's memory: what the worker reported, else what JAX says of it (None on the CPU)."""
    if reported:
        return reported
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-models", type=int, default=2)
    parser.add_argument("--memory-bytes", type=int, default=0, help="the device's memory, as the worker found it")
    parser.add_argument("--memory-fraction", type=float, default=0.5, help="of it, the share models may hold")
    args = parser.parse_args(argv)
    # The protocol owns stdout: anything a library prints goes to stderr instead.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    from app.trainer import compilation_cache

    compilation_cache.use(os.environ.get(run_files.COMPILATION_CACHE_ENV, ""))
    memory = _memory_bytes(args.memory_bytes or None)
    server = Server(out, Models(args.max_models, int(memory * args.memory_fraction) if memory else None))
    server.say("ready", memory_bytes=memory, pid=os.getpid())
    threading.Thread(target=server.read, args=(sys.stdin,), daemon=True).start()
    server.serve()
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    os._exit(code)  # Orbax and JAX threads must not hold the process open once stdin is closed
