"""The hot path at scale: the status fragment against a bare route under gunicorn, the list pages and
/metrics among a million runs, and the memory of a web process over 10,000 polls.

    .venv/bin/python bench/hot_path.py [--runs 1000000] [--pending 100000] [--seconds 5] [--rounds 3]

A scratch database is seeded with INSERT ... SELECT generate_series (then VACUUM ANALYZE):
`--runs` runs of which `--pending` are queued, a running run with 5,000 metric points and 2 MB
of stored log, and a finished one. gunicorn serves the app as docs/deploy.md says (2 processes x 8
threads) with one bare route added (`/bench/bare`: the same sign-in check, no query, no template).
Throughput is wrk's (Debian's package, 2 threads, 16 connections) when installed, else a
closed-loop client of our own, in rounds each paired with a bare-route round just before it (the
ratio is the median of the pairs'); latency at an offered 250 requests/s comes from an open-loop
client (requests start on schedule whatever the previous ones did, so slow answers are counted).
"""
from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.output import write_results  # noqa: E402
from bench.bench_db import scratch_database  # noqa: E402

WRK = shutil.which("wrk")
SEED_RUNS = """
INSERT INTO tunix_runs (id, status, mode, dataset_key, model_id, config, created_at, queued_at, started_at,
                        completed_at, duration_seconds, final_loss, result)
SELECT gen_random_uuid(),
       CASE WHEN g <= :pending THEN 'pending' WHEN g % 10 = 0 THEN 'failed' ELSE 'completed' END,
       CASE WHEN g % 7 = 0 THEN 'sync' ELSE 'async' END, 'arithmetic-v1', 'tiny',
       '{"learning_rate": 0.001, "batch_size": 4}'::jsonb,
       now() - interval '30 days' + g * interval '1 second',
       now() - interval '30 days' + g * interval '1 second',
       CASE WHEN g > :pending THEN now() - interval '29 days' END,
       CASE WHEN g > :pending THEN now() - interval '29 days' END,
       CASE WHEN g > :pending THEN 12.5 END, CASE WHEN g > :pending THEN 1.5 END,
       CASE WHEN g > :pending THEN '{"final_loss": 1.5, "steps": 200}'::jsonb END
FROM generate_series(1, :runs) AS g
"""


def seed(app, runs: int, pending: int) -> dict[str, str]:
    """The million runs, and the three runs whose pages are polled; their ids by scenario."""
    from sqlalchemy import text

    from app.accounts import service as accounts
    from app.execution.recorder import ProgressRecorder
    from app.extensions import db
    from app.runs import service as run_service

    with app.app_context():
        user, password = accounts.create_user("bench")
        token = accounts.create_token(user, "bench")[1]
        db.session.execute(text(SEED_RUNS), {"runs": runs, "pending": pending})
        db.session.commit()
        ids = {}
        # The pending run queued last: every seeded pending run is ahead of it.
        ids["pending"] = str(run_service.submit_run({"dataset_key": "arithmetic-v1"}, "async")[0].id)
        for scenario in ("running", "finished"):
            run, _ = run_service.submit_run({"dataset_key": "arithmetic-v1", "name": scenario}, "async")
            db.session.execute(text("UPDATE tunix_runs SET status = 'running', worker_id = 'bench', attempt = 1, "
                                    "started_at = now(), queued_at = now() - interval '40 days' WHERE id = :id"),
                               {"id": run.id})
            db.session.commit()
            recorder = ProgressRecorder(run.id, flush_seconds=3600, log_max_bytes=4 * 1024 * 1024)
            recorder.on_event({"event": "start", "total_steps": 6000})
            line = ("step output " + "x" * 88 + "\n").encode()
            for step in range(1, 5001):
                recorder.on_event({"event": "step", "step": step, "loss": 6.0 - step / 1500,
                                   "elapsed_seconds": step * 0.05, "tokens_per_second": 20000.0})
                if step % 20 == 0:
                    recorder.on_event({"event": "eval", "step": step, "loss": 6.2 - step / 1500})
                recorder.on_output("stdout", line * 4)  # 400 bytes a step: 2 MB in all
                if step % 250 == 0:
                    recorder.flush()
            recorder.flush()
            if scenario == "finished":
                db.session.execute(text("UPDATE tunix_runs SET status = 'completed', completed_at = now(), "
                                        "duration_seconds = 250, version = version + 1 WHERE id = :id"),
                                   {"id": run.id})
                db.session.commit()
            ids[scenario] = str(run.id)
        db.session.remove()
    return {**ids, "password": password, "token": token}


def analyze(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text("VACUUM ANALYZE"))
        # Write out what seeding dirtied now, not in a checkpoint in the middle of the measurements.
        connection.execute(text("CHECKPOINT"))
    engine.dispose()


BENCH_WSGI = '''
from wsgi import app

@app.get("/bench/bare")
def bench_bare():
    return "ok"
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_gunicorn(url: str, tmp: Path, port: int) -> subprocess.Popen:
    (tmp / "bench_wsgi.py").write_text(BENCH_WSGI)
    env = dict(os.environ, DATABASE_URL=url, PORT=str(port), TUNIX_INSTANCE_DIR=str(tmp),
               PYTHONPATH=os.pathsep.join([str(tmp), str(ROOT)]), TUNIX_METRICS_CACHE_SECONDS="0")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
                             "--access-logfile", "/dev/null", "bench_wsgi:app"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/api/health")
            if connection.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    raise SystemExit("gunicorn did not start")


def sign_in(port: int, password: str) -> str:
    """The session cookie of the bench user, through the sign-in form."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/login")
    response = connection.getresponse()
    body = response.read().decode()
    cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    token = re.search(r'name="csrf_token" value="([^"]+)"', body)[1]
    form = f"username=bench&password={password}&csrf_token={token}"
    connection.request("POST", "/login", body=form, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": cookie,
        "Referer": f"http://127.0.0.1:{port}/login"})
    response = connection.getresponse()
    response.read()
    return response.headers["Set-Cookie"].split(";", 1)[0]


def get(port: int, path: str, headers: dict) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    return response.status, dict(response.headers), response.read()


def max_rate(port: int, path: str, headers: dict, seconds: float) -> float:
    """Requests/s at saturation: wrk (2 threads, 16 connections) or our own 16 keep-alive connections."""
    if WRK:
        args = [WRK, "-t2", "-c16", f"-d{int(seconds)}s"]
        for name, value in headers.items():
            args += ["-H", f"{name}: {value}"]
        out = subprocess.run(args + [f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True).stdout
        found = re.search(r"Requests/sec:\s+([\d.]+)", out)
        return float(found[1]) if found else 0.0
    done, stop = [0], time.monotonic() + seconds

    def loop():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < stop:
            connection.request("GET", path, headers=headers)
            connection.getresponse().read()
            done[0] += 1

    threads = [threading.Thread(target=loop) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done[0] / seconds


def open_loop(port: int, path: str, headers: dict, rate: float, seconds: float) -> dict:
    """p50/p99 (ms) and delivered rate at an offered `rate`, timed from each request's scheduled start."""
    total = int(rate * seconds)
    start = time.monotonic() + 0.2
    latencies: list[float] = []
    lock = threading.Lock()
    next_index = [0]

    def loop():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                index = next_index[0]
                next_index[0] += 1
            if index >= total:
                return
            scheduled = start + index / rate
            delay = scheduled - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            connection.request("GET", path, headers=headers)
            connection.getresponse().read()
            with lock:
                latencies.append((time.monotonic() - scheduled) * 1000)

    threads = [threading.Thread(target=loop) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    latencies.sort()
    return {"p50_ms": round(latencies[len(latencies) // 2], 1),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1], 1),
            "delivered_per_s": round(len(latencies) / elapsed, 1)}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def worker_pids(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def list_and_metrics(app, seconds_per_query: int = 30) -> list[dict]:
    """Each list query and the /metrics read, timed in process, with its plan checked for an index."""
    from sqlalchemy import text
    from sqlalchemy.dialects import postgresql

    from app.extensions import db
    from app.queue import registry
    from app.runs import queries

    rows = []
    with app.app_context():
        deep = db.session.execute(text("SELECT created_at, id FROM tunix_runs ORDER BY created_at DESC, id DESC "
                                       "OFFSET (SELECT count(*) * 9 / 10 FROM tunix_runs) LIMIT 1")).one()
        deep_cursor = queries.encode_cursor(deep.created_at, deep.id)
        cases = [("newest page", {}), ("status=failed", {"status": "failed"}), ("mode=sync", {"mode": "sync"}),
                 ("status=failed&mode=sync&dataset", {"status": "failed", "mode": "sync",
                                                      "dataset_key": "arithmetic-v1"}),
                 ("cursor 90 % down", {"cursor": deep_cursor}),
                 ("cursor 90 % down, status=completed", {"cursor": deep_cursor, "status": "completed"}),
                 ("cursor 90 % down, mode=sync", {"cursor": deep_cursor, "mode": "sync"})]
        for name, filters in cases:
            times = []
            for _ in range(seconds_per_query):
                started = time.perf_counter()
                queries.list_runs(limit=25, **filters)
                times.append((time.perf_counter() - started) * 1000)
                db.session.rollback()
            sql = str(queries.list_runs_query(limit=25, **filters).compile(
                dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
            plan = [r[0] for r in db.session.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql))]
            db.session.rollback()
            text_plan = "\n".join(plan)
            uses_index = "Index Scan" in text_plan or "Index Only Scan" in text_plan or "Bitmap Index" in text_plan
            position_in_index = "cursor" not in name or bool(re.search(
                r"Index Cond: .*ROW\((tunix_runs\.)?created_at, (tunix_runs\.)?id\) <", text_plan))
            rows.append({"query": name, "p50_ms": round(statistics.median(times), 2), "index": uses_index,
                         "position_is_index_condition": position_in_index, "plan": plan})
        times = []
        for _ in range(seconds_per_query):
            started = time.perf_counter()
            registry.queue_stats(60)
            times.append((time.perf_counter() - started) * 1000)
        rows.append({"query": "/metrics counts (queue_stats)", "p50_ms": round(statistics.median(times), 2),
                     "index": True, "position_is_index_condition": True, "plan": []})
        db.session.remove()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=5, help="seconds per throughput measurement")
    parser.add_argument("--rounds", type=int, default=3,
                        help="throughput rounds per row, each paired with a bare-route round just before it")
    parser.add_argument("--polls", type=int, default=10_000, help="fragment requests between the RSS readings")
    args = parser.parse_args()
    results: dict = {"date": time.strftime("%Y-%m-%d"), "runs": args.runs, "pending": args.pending,
                     "client": "wrk -t2 -c16" if WRK else "own closed loop, 16 connections"}

    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="tunix-bench-") as tmp:
        os.environ["TUNIX_INSTANCE_DIR"] = tmp
        from app import create_app

        app = create_app({"DATABASE_URL": url})
        started = time.monotonic()
        ids = seed(app, args.runs, args.pending)
        analyze(url)
        results["seed_seconds"] = round(time.monotonic() - started, 1)
        print(f"seeded {args.runs:,} runs ({args.pending:,} pending) in {results['seed_seconds']} s")

        port = free_port()
        server = start_gunicorn(url, Path(tmp), port)
        try:
            cookie = sign_in(port, ids["password"])
            headers = {"Cookie": cookie}
            paths = {"bare route": "/bench/bare"}
            for scenario in ("pending", "running", "finished"):
                status = "pending" if scenario == "pending" else ("running" if scenario == "running" else "completed")
                paths[f"fragment, {scenario}"] = f"/runs/{ids[scenario]}/status?log_after=999999&seen={status}"
            paths["status JSON, running"] = f"/api/tunix/runs/{ids['running']}/status"
            api = {"Authorization": f"Bearer {ids['token']}"}  # the API takes a token, not the session

            def headers_for(path: str) -> dict:
                return api if path.startswith("/api/") else headers

            for path in paths.values():  # warm every process and cache
                for _ in range(20):
                    get(port, path, headers_for(path))
            table = []
            bare_path = paths["bare route"]

            def paired(path: str, path_headers: dict) -> tuple[float, float, float]:
                """Median requests/s of `path`, of the bare route measured just before each of its rounds,
                and the median of their ratios: this machine drifts by tens of percent within minutes."""
                pairs = [(max_rate(port, bare_path, headers, args.seconds),
                          max_rate(port, path, path_headers, args.seconds)) for _ in range(args.rounds)]
                return (statistics.median(p for _, p in pairs), statistics.median(b for b, _ in pairs),
                        statistics.median(p / b for b, p in pairs if b))

            for name, path in paths.items():
                code, response_headers, body = get(port, path, headers_for(path))
                if code != 200:
                    raise SystemExit(f"{name}: {path} answered {code}")
                row = {"what": name, "status": code, "bytes": len(body)}
                if name == "bare route":
                    row["max_per_s"] = round(statistics.median(
                        max_rate(port, path, headers, args.seconds) for _ in range(args.rounds)), 1)
                    row["ratio"] = 1.0
                else:
                    rate, bare, ratio = paired(path, headers_for(path))
                    row.update(max_per_s=round(rate, 1), bare_per_s=round(bare, 1), ratio=round(ratio, 3))
                etag = response_headers.get("ETag")
                if etag:
                    conditional = {**headers, "If-None-Match": etag}
                    rate, bare, ratio = paired(path, conditional)
                    row.update(max_per_s_conditional=round(rate, 1), bare_per_s_conditional=round(bare, 1),
                               ratio_conditional=round(ratio, 3))
                    row["at_250"] = open_loop(port, path, headers, 250, args.seconds)
                    row["at_250_conditional"] = open_loop(port, path, conditional, 250, args.seconds)
                else:
                    row["at_250"] = open_loop(port, path, headers_for(path), 250, args.seconds)
                table.append(row)
            results["fragment"] = table

            # Memory: one gunicorn process after warm-up and after --polls more fragment requests.
            pids = worker_pids(server.pid)
            before = {pid: rss_mb(pid) for pid in pids}
            path = paths["fragment, running"]
            for _ in range(args.polls):
                get(port, path, headers)
            after = {pid: rss_mb(pid) for pid in pids}
            results["rss_mb"] = {"before": before, "after": after, "polls": args.polls}
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)

        results["list_and_metrics"] = list_and_metrics(app)

    print(f"\nStatus fragment under gunicorn (2 x 8 threads), client: {results['client']}; requests/s and ratios "
          f"are medians of {args.rounds} rounds, each against the bare route measured just before it")
    print(f"{'what':<24}{'bytes':>8}{'max/s':>9}{'ratio':>7}{'max/s 304':>11}{'ratio':>7}"
          f"{'p50@250':>9}{'p99@250':>9}{'p50 304':>9}{'p99 304':>9}")
    for row in results["fragment"]:
        cond = row.get("at_250_conditional") or {}
        print(f"{row['what']:<24}{row['bytes']:>8}{row['max_per_s']:>9}{row['ratio'] or 1:>7}"
              f"{row.get('max_per_s_conditional', '-'):>11}{row.get('ratio_conditional', '-'):>7}"
              f"{row['at_250']['p50_ms']:>9}{row['at_250']['p99_ms']:>9}"
              f"{cond.get('p50_ms', '-'):>9}{cond.get('p99_ms', '-'):>9}")
    rss = results["rss_mb"]
    print(f"\nRSS of each gunicorn process (MB): {list(rss['before'].values())} after warm-up, "
          f"{list(rss['after'].values())} after {rss['polls']:,} more fragment requests")
    print(f"\nList pages and /metrics among {args.runs:,} runs (in process, p50 of 30)")
    for row in results["list_and_metrics"]:
        print(f"  {row['query']:<42}{row['p50_ms']:>8} ms  index: {row['index']}, "
              f"position an index condition: {row['position_is_index_condition']}")
    for row in results["list_and_metrics"]:
        if row["plan"]:
            print(f"\nEXPLAIN (ANALYZE, BUFFERS): {row['query']}")
            print("\n".join("  " + line for line in row["plan"]))
    write_results("hot_path", results)


if __name__ == "__main__":
    main()
