"""The playground, on this host with the `tiny` preset: time to first token cold (the worker's server loads and
compiles the model) and warm; tokens/s warm against Tunix's sampler called directly on the same model (the
same weights, prompt and greedy settings, in a process of its own); and the latency of 20 short requests
queued at once, from being asked to being answered.

Requests go in as the API makes them (`app.playground.service.submit`) and a real `worker.py` answers them
through its generation server. The sampler's own figure comes from a child process (`--direct`) that builds
the model as the server does and calls `tunix.generate.sampler.Sampler` in a loop.

    .venv/bin/python bench/playground.py [--warm 20] [--tokens 512] [--queued 20] [--short-tokens 16]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_db import scratch_database  # noqa: E402
from app.contract import generation  # noqa: E402
from bench.output import write_results  # noqa: E402

PROMPT = "what is 2+2?"  # the untrained preset answers it with every token it may: a fair throughput


def direct(tokens: int, repeats: int) -> dict:
    """Tunix's sampler on the tiny preset, in this process: tokens/s of `repeats` warm calls (median)."""
    from app.contract import prompt_format
    from app.contract.text_tokenizers import load_tokenizer
    from app.trainer import evaluation, model_factory
    from tunix.generate import sampler as tunix_sampler

    tokenizer = load_tokenizer("tiny")
    model = model_factory.build_model({"model_id": "tiny", "seed": 0, "finetune": "full"}, tokenizer.vocab_size)
    adapted = evaluation.SamplerTokenizer(tokenizer, 128)
    text = prompt_format.PlainFormat().prompt(PROMPT)
    length = evaluation.prompt_length_for(adapted, [text])
    sampler = tunix_sampler.Sampler(model, adapted, tunix_sampler.CacheConfig(
        cache_size=length + tokens, num_layers=model.config.num_layers, num_kv_heads=model.config.num_kv_heads,
        head_dim=model.config.head_dim))
    sampler([text], max_generation_steps=tokens, max_prompt_length=length, temperature=0.0)  # compile
    rates, generated = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        output = sampler([text], max_generation_steps=tokens, max_prompt_length=length, temperature=0.0)
        seconds = time.perf_counter() - started
        generated = evaluation.generated_length(output.tokens[0], adapted)
        rates.append(generated / seconds)
    return {"tokens": generated, "tokens_per_second": round(statistics.median(rates), 1), "text": output.text[0]}


def wait_answered(app, ids, interval: float = 0.2, timeout: float = 900.0) -> list:
    """The requests once all have ended (each must have completed), as plain figures. The figures are the
    database's and the server's own, so the poll's interval changes none of them; a slow poll leaves the CPU
    to the worker."""
    from app.extensions import db
    from app.models import GenerationRequest

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = db.session.scalars(db.select(GenerationRequest).where(GenerationRequest.id.in_(ids))
                                  .execution_options(populate_existing=True)).all()
        db.session.rollback()
        if len(rows) == len(ids) and all(r.status not in ("pending", "running") for r in rows):
            assert all(r.status == "completed" for r in rows), [(r.status, r.error_message) for r in rows]
            order = {i: n for n, i in enumerate(ids)}
            return [{"answers": list(r.answers), "load_seconds": r.load_seconds,
                     "created_at": r.created_at, "started_at": r.started_at, "finished_at": r.finished_at}
                    for r in sorted(rows, key=lambda r: order[r.id])]
        time.sleep(interval)
    raise TimeoutError("the worker did not answer in time")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--warm", type=int, default=20, help="warm requests timed")
    parser.add_argument("--tokens", type=int, default=512, help="new tokens per warm request")
    parser.add_argument("--queued", type=int, default=20, help="short requests queued at once")
    parser.add_argument("--short-tokens", type=int, default=16)
    parser.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.direct:
        print(json.dumps(direct(args.tokens, args.warm)))
        return

    with scratch_database() as url, tempfile.TemporaryDirectory() as folder:
        from app import create_app
        from app.accounts import service as accounts
        from app.accounts.service import Actor
        from app.playground import service as playground

        app = create_app({"DATABASE_URL": url, "ARTIFACTS_ROOT": str(Path(folder) / "artifacts"),
                          "SCRATCH_DIR": str(Path(folder) / "scratch"), "PLAYGROUND_MAX_WAITING": 10_000})
        env = dict(os.environ, DATABASE_URL=url, TUNIX_ARTIFACTS_ROOT=str(Path(folder) / "artifacts"),
                   TUNIX_SCRATCH_DIR=str(Path(folder) / "scratch"), TUNIX_DEVICE_PROBE_COMMAND="",
                   TUNIX_WORKER_POLL_SECONDS="0.2", TUNIX_HEARTBEAT_SECONDS="1", TUNIX_COMPILATION_CACHE_DIR="")
        worker = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        try:
            with app.app_context():
                user, _ = accounts.create_user("bencher", admin=False, password="bench password 1234")
                actor = Actor.of(user)
                limits = playground.Settings.from_config(app.config)

                def ask(count: int, tokens: int) -> list:
                    rows = []
                    for _ in range(count):  # one request each, as many people asking at once would
                        rows += playground.submit(["tiny"], [PROMPT], {"max_new_tokens": tokens}, actor, limits, [])
                    return [r.id for r in rows]

                cold = wait_answered(app, ask(1, args.tokens))[0]
                warm = wait_answered(app, [i for _ in range(args.warm) for i in ask(1, args.tokens)])
                # One short request first: its shape compiles once, and the queue is then measured alone.
                short_first = wait_answered(app, ask(1, args.short_tokens))[0]
                queued_at = time.perf_counter()
                queued = wait_answered(app, ask(args.queued, args.short_tokens))
                queued_wall = time.perf_counter() - queued_at
            # Measured while the worker still runs (idle, with its server and the model loaded), so both figures
            # are taken with the same company on the CPU.
            sampler = json.loads(subprocess.run(
                [sys.executable, __file__, "--direct", "--tokens", str(args.tokens), "--warm", str(args.warm)],
                cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)

    warm_answers = [r["answers"][0] for r in warm]
    warm_rate = statistics.median(a["tokens_per_second"] for a in warm_answers)
    end_to_end = statistics.median(a["tokens"] / (r["finished_at"] - r["started_at"]).total_seconds()
                                   for r, a in zip(warm, warm_answers))
    latencies = [(r["finished_at"] - r["created_at"]).total_seconds() * 1000 for r in queued]
    results = {
        "model": "tiny", "prompt": PROMPT, "max_new_tokens": args.tokens,
        "ttft_cold_seconds": cold["answers"][0]["ttft_seconds"], "cold_load_seconds": cold["load_seconds"],
        "ttft_warm_ms": round(statistics.median(a["ttft_seconds"] for a in warm_answers) * 1000, 2),
        "tokens": warm_answers[0]["tokens"],
        "tokens_per_second_warm": round(warm_rate, 1),
        "tokens_per_second_sampler_direct": sampler["tokens_per_second"],
        "ratio": round(warm_rate / sampler["tokens_per_second"], 3),
        "same_answer_as_sampler": warm_answers[0]["text"] == generation.storable(sampler["text"]),
        "tokens_per_second_end_to_end": round(end_to_end, 1),
        "queued": {"requests": args.queued, "max_new_tokens": args.short_tokens,
                   "first_of_its_shape_ttft_seconds": short_first["answers"][0]["ttft_seconds"],
                   "p50_ms": round(percentile(latencies, 0.5), 1), "p99_ms": round(percentile(latencies, 0.99), 1),
                   "all_answered_seconds": round(queued_wall, 2)},
    }
    print(f"time to first token: cold {results['ttft_cold_seconds']:.2f} s (load and compile "
          f"{results['cold_load_seconds']:.2f} s), warm {results['ttft_warm_ms']} ms")
    print(f"tokens/s warm ({results['tokens']} tokens): {results['tokens_per_second_warm']} through the playground, "
          f"{results['tokens_per_second_sampler_direct']} with Tunix's sampler called directly: ratio "
          f"{results['ratio']} (same answer: {results['same_answer_as_sampler']}); end to end, with the queue and "
          f"the database, {results['tokens_per_second_end_to_end']}")
    print(f"{args.queued} short requests ({args.short_tokens} tokens) queued at once, after one that compiled their "
          f"shape (first token after {results['queued']['first_of_its_shape_ttft_seconds']:.2f} s): p50 "
          f"{results['queued']['p50_ms']} ms, p99 {results['queued']['p99_ms']} ms, all answered in "
          f"{results['queued']['all_answered_seconds']} s")
    print(f"results: {write_results('playground', results)}")


if __name__ == "__main__":
    main()
