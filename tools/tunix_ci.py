#!/usr/bin/env python3
"""Tunix RT from a CI job: submit a run, wait for it, print its gates' verdicts, exit by them.

    TUNIX_URL=https://tunix.example.com TUNIX_TOKEN=trt_... python tunix_ci.py run run.json
    python tunix_ci.py gates RUN_ID

run.json is the body of POST /api/tunix/run (dataset_key, model_id, candidate_for, hyperparameters...).
Exit status: 0 every gate passed (or the model has none), 1 a gate failed, 2 the run did not complete
(failed, cancelled, timed out, or still running at --timeout), 3 the request itself was refused or the
server could not be reached (the message says why). Python's standard library only: copy this one file.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

PASSED, GATE_FAILED, RUN_FAILED, CLIENT_ERROR = 0, 1, 2, 3
TERMINAL = {"completed", "failed", "cancelled", "timeout"}


class Refused(Exception):
    """The server answered with an error, or could not be reached."""


class Client:
    def __init__(self, url: str, token: str, timeout: float = 30.0):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def call(self, method: str, path: str, body: dict | None = None, headers: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Accept": "application/json",
            **({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            try:
                error = json.loads(exc.read())
                details = "; ".join(f"{k}: {v}" for k, v in (error.get("details") or {}).items())
                message = error.get("error", "") + (f" ({details})" if details else "")
            except ValueError:
                message = exc.reason
            raise Refused(f"{method} {path} answered {exc.code}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise Refused(f"{method} {path} could not reach {self.url}: {exc}") from None


def _progress_line(run: dict) -> str:
    progress = run.get("progress") or {}
    line = f"run {run['run_id'][:8]}: {run['status']}"
    if progress.get("step") is not None and progress.get("total_steps"):
        line += f", step {progress['step']}/{progress['total_steps']}"
    if isinstance(progress.get("loss"), (int, float)):
        line += f", loss {progress['loss']:.4f}"
    if progress.get("phase"):
        line += f" ({progress['phase']})"
    return line


def wait(client: Client, run_id: str, timeout: float, poll: float, out=sys.stdout) -> dict:
    """Poll the run until it ends (or the timeout), printing a line whenever where it stands changes."""
    deadline = time.monotonic() + timeout
    shown = None
    while True:
        run = client.call("GET", f"/api/tunix/runs/{run_id}")
        line = _progress_line(run)
        if line != shown:
            print(line, file=out, flush=True)
            shown = line
        if run["status"] in TERMINAL or time.monotonic() >= deadline:
            return run
        time.sleep(poll)


def report_gates(client: Client, run_id: str, out=sys.stdout) -> int:
    """Print the verdicts; 0 when every gate passed (or there are none), 1 otherwise."""
    report = client.call("GET", f"/api/tunix/runs/{run_id}/gates")
    if not report["candidate_for"]:
        print("the run names no model in candidate_for: no gates judged it", file=out)
        return PASSED
    if not report["verdicts"]:
        print(f"{report['candidate_for']} has no gates: nothing to fail", file=out)
        return PASSED
    for v in report["verdicts"]:
        numbers = f"{v['metric']} {v['candidate_value']}"
        if v["baseline_version"] is not None:
            numbers += f" vs version {v['baseline_version']}'s {v['baseline_value']}"
            if v["delta"] is not None:
                numbers += f" (delta {v['delta']:+.4f}, noise allowance {v['allowance'] or 0:.4f})"
        print(f"{'PASS' if v['passed'] else 'FAIL'} gate {v['gate_id']}: {numbers}: {v['reason']}", file=out)
    failed = [v for v in report["verdicts"] if not v["passed"]]
    print(f"{len(report['verdicts']) - len(failed)} of {len(report['verdicts'])} gates of "
          f"{report['candidate_for']} passed", file=out)
    return GATE_FAILED if failed else PASSED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("TUNIX_URL", ""), help="the server (default: $TUNIX_URL)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="submit a run from a JSON file, wait for it, judge it by its gates")
    run.add_argument("config", help="the run's JSON body (POST /api/tunix/run)")
    run.add_argument("--timeout", type=float, default=6 * 3600, help="seconds to wait for the run (default 6 h)")
    run.add_argument("--poll", type=float, default=5.0, help="seconds between polls (default 5)")
    run.add_argument("--idempotency-key", help="the same key starts one run however often the job is retried")
    gates = commands.add_parser("gates", help="print a finished run's gate verdicts and exit by them")
    gates.add_argument("run_id")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return CLIENT_ERROR if exc.code else PASSED
    token = os.environ.get("TUNIX_TOKEN", "")
    if not args.url or not token:
        print("set TUNIX_URL (or --url) and TUNIX_TOKEN (an API token made on /settings/tokens)", file=sys.stderr)
        return CLIENT_ERROR
    client = Client(args.url, token)
    try:
        if args.command == "gates":
            return report_gates(client, args.run_id)
        try:
            with open(args.config, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError) as exc:
            print(f"cannot read {args.config}: {exc}", file=sys.stderr)
            return CLIENT_ERROR
        headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
        accepted = client.call("POST", "/api/tunix/run?mode=async", config, headers)
        print(f"submitted run {accepted['run_id']}: {client.url}/runs/{accepted['run_id']}", flush=True)
        finished = wait(client, accepted["run_id"], args.timeout, args.poll)
        if finished["status"] != "completed":
            why = finished.get("error_message") or ("still running at --timeout" if finished["status"] not in TERMINAL
                                                    else finished["status"])
            print(f"the run did not complete: {finished['status']}: {why}", file=sys.stderr)
            return RUN_FAILED
        return report_gates(client, accepted["run_id"])
    except Refused as exc:
        print(str(exc), file=sys.stderr)
        return CLIENT_ERROR


if __name__ == "__main__":
    sys.exit(main())
