"""The cost of evaluation: generating and scoring answers with Tunix's sampler (`tiny`, this CPU), and a
dataset's leaderboard query among 100,000 scored runs.

    .venv/bin/python bench/evaluation.py [--examples 200] [--runs 100000]

Generation runs in a child process (the trainer's stack, JAX on the CPU): one pass that compiles,
then three timed passes over the same examples. The leaderboard part seeds a scratch database
with INSERT ... SELECT generate_series, runs VACUUM ANALYZE, and times the API's own query.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.output import write_results  # noqa: E402

def generation_child(examples: int, max_new_tokens: int) -> dict:
    """In the child: a tiny model, `examples` held-out prompts of the sample dataset, passes timed."""
    from app.contract.text_tokenizers import ByteTokenizer
    from app.datasets.sample import sample_examples
    from app.runs.validation import validate_run_config
    from app.trainer import evaluation, model_factory

    config = validate_run_config({"dataset_key": "bench", "eval_max_examples": examples,
                                  "eval_max_new_tokens": max_new_tokens})
    tokenizer = ByteTokenizer()
    model = model_factory.build_model(config, tokenizer.vocab_size)
    pairs = [(e.prompt, e.response) for e in sample_examples(examples)]
    eval_set = evaluation.EvalSet(pairs, "bench", "held-out split")
    with tempfile.TemporaryDirectory() as run_dir, open(os.devnull, "w") as quiet:
        evaluator = evaluation.Evaluator(eval_set, tokenizer, model.config, config, Path(run_dir))
        stdout, sys.stdout = sys.stdout, quiet  # the protocol events are not this benchmark's output
        try:
            started = time.perf_counter()
            evaluator.run(model, "before")
            first = time.perf_counter() - started
            passes = []
            for _ in range(3):
                started = time.perf_counter()
                metrics = evaluator.run(model, "after")
                passes.append(time.perf_counter() - started)
        finally:
            sys.stdout = stdout
    steady = statistics.median(passes)
    return {"examples": examples, "max_new_tokens": max_new_tokens, "batch": evaluator.batch_size,
            "first_pass_s": round(first, 2), "steady_pass_s": round(steady, 3),
            "seconds_per_100": round(steady / examples * 100, 3),
            "seconds_per_100_with_compile": round(first / examples * 100, 3),
            "tokens_per_second": round(metrics["mean_generated_tokens"] * examples / steady, 1)}


def seed_runs(url: str, runs: int, datasets: int) -> None:
    """`runs` completed, scored runs spread over `datasets` eval datasets, in one statement."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO tunix_runs (id, status, mode, dataset_key, model_id, config, created_at, queued_at, "
            "started_at, completed_at, duration_seconds, evaluated_on, final_loss, final_eval_loss, answer_match, "
            "exact_match, result) "
            "SELECT gen_random_uuid(), 'completed', 'async', 'arithmetic-v1', 'tiny', "
            "jsonb_build_object('learning_rate', 0.001, 'batch_size', 4, 'finetune', 'full', 'num_epochs', 3), "
            "now() - g * interval '1 second', now(), now(), now(), 10, "
            "'golden-' || (g % :datasets), random() * 3, random() * 3, round((random())::numeric, 3)::float, "
            "round((random() * 0.5)::numeric, 3)::float, '{}'::jsonb "
            "FROM generate_series(1, :runs) AS g"), {"runs": runs, "datasets": datasets})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE tunix_runs"))
    engine.dispose()


def leaderboard_timing(url: str, key: str, calls: int = 200) -> dict:
    from sqlalchemy import text
    from sqlalchemy.dialects import postgresql

    from app import create_app
    from app.extensions import db
    from app.runs import evaluation

    app = create_app({"DATABASE_URL": url})
    with app.app_context():
        evaluation.leaderboard(key)  # warm the connection and the plan cache
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            evaluation.leaderboard(key, 50, 0)
            times.append((time.perf_counter() - started) * 1000)
        deep = []
        for _ in range(20):
            started = time.perf_counter()
            evaluation.leaderboard(key, 50, 4000)
            deep.append((time.perf_counter() - started) * 1000)
        sql = str(evaluation.leaderboard_query(key, 50, 0).compile(dialect=postgresql.dialect(),
                                                                   compile_kwargs={"literal_binds": True}))
        plan = [row[0] for row in db.session.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql))]
        db.session.rollback()
        db.engine.dispose()
    times.sort()
    return {"p50_ms": round(statistics.median(times), 2), "p99_ms": round(times[int(len(times) * 0.99) - 1], 2),
            "offset_4000_p50_ms": round(statistics.median(deep), 2), "plan": plan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--datasets", type=int, default=20)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(generation_child(args.examples, args.max_new_tokens)))
        return

    out = subprocess.run([sys.executable, __file__, "--child", "--examples", str(args.examples),
                          "--max-new-tokens", str(args.max_new_tokens)], check=True, capture_output=True,
                         text=True, cwd=ROOT).stdout
    gen = json.loads(out.strip().splitlines()[-1])
    print(f"Generation and scoring, tiny preset, greedy, {gen['max_new_tokens']} new tokens, "
          f"batches of {gen['batch']}, {gen['examples']} examples")
    print(f"  first pass (traces and compiles): {gen['first_pass_s']:>7} s "
          f"({gen['seconds_per_100_with_compile']} s per 100 examples)")
    print(f"  compiled pass:                    {gen['steady_pass_s']:>7} s "
          f"({gen['seconds_per_100']} s per 100 examples, {gen['tokens_per_second']:,} generated tokens/s)")

    from bench.bench_db import scratch_database

    with scratch_database() as url:
        started = time.perf_counter()
        seed_runs(url, args.runs, args.datasets)
        seeded = time.perf_counter() - started
        board = leaderboard_timing(url, f"golden-{min(7, args.datasets - 1)}")
    print(f"Leaderboard among {args.runs:,} scored runs on {args.datasets} datasets (seeded in {seeded:.1f} s)")
    print(f"  first page of 50:   p50 {board['p50_ms']} ms, p99 {board['p99_ms']} ms")
    print(f"  offset 4,000:       p50 {board['offset_4000_p50_ms']} ms")
    print("  EXPLAIN (ANALYZE, BUFFERS) of the first page:")
    for line in board["plan"]:
        print("    " + line)
    # A small table is rightly read whole; at scale, the page must come from its index.
    if args.runs >= 10_000 and not any("ix_tunix_runs_leaderboard" in line for line in board["plan"]):
        sys.exit("the leaderboard query did not use its index")
    write_results("evaluation", {"generation": gen, "leaderboard": board})


if __name__ == "__main__":
    main()
