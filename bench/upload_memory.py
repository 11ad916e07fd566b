"""Memory and time of a dataset upload: a JSONL file posted to the API, measured in its own process.

Each size runs in a fresh child process, so its peak RSS is the upload's alone: parsing the
stream, checking every line, and storing the examples (or refusing the file past the cap).

    .venv/bin/python bench/upload_memory.py [--lines 50000 200000 1000000]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_db import scratch_database  # noqa: E402


def measure_one(url: str, lines: int) -> dict:
    """In this process: build the app, sign a token in, post `lines` lines, report time and peak RSS."""
    import io

    from app import create_app
    from app.accounts import service as accounts

    app = create_app({"DATABASE_URL": url, "MAX_CONTENT_LENGTH": 512 * 1024 * 1024})
    line = json.dumps({"prompt": "How many apples are left after 7 are eaten from 19?",
                       "response": "19 - 7 = 12. The answer is 12."}).encode() + b"\n"
    body = line * lines
    with app.app_context():
        user, _ = accounts.create_user(f"bench-{lines}")
        token = accounts.create_token(user, "bench")[1]
        client = app.test_client()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        response = client.post("/api/datasets", data={"name": f"bench{lines}", "file": (io.BytesIO(body), "d.jsonl")},
                               headers={"Authorization": f"Bearer {token}"})
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"lines": lines, "mb": round(len(body) / 2**20, 1), "status": response.status_code,
            "seconds": round(seconds, 2), "rss_before_mb": round(before / 1024), "rss_peak_mb": round(peak / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[50_000, 200_000, 1_000_000])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_one(os.environ["DATABASE_URL"], args.child)))
        return
    with scratch_database() as url, tempfile.TemporaryDirectory(prefix="tunix-bench-") as tmp:
        env = dict(os.environ, DATABASE_URL=url, TUNIX_INSTANCE_DIR=tmp)
        print(f"{'lines':>9}{'MB':>7}{'status':>8}{'seconds':>9}{'RSS before':>12}{'RSS peak':>10}")
        for lines in args.lines:
            out = subprocess.run([sys.executable, __file__, "--child", str(lines)], env=env, check=True,
                                 capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(f"{r['lines']:>9}{r['mb']:>7}{r['status']:>8}{r['seconds']:>9}{r['rss_before_mb']:>10} MB"
                  f"{r['rss_peak_mb']:>7} MB")


if __name__ == "__main__":
    main()
