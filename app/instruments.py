"""The metric objects every layer records into: run durations and database write latency.

Below every package, so that the queue, the services and the worker can time what they do
without importing the `/metrics` endpoint (`app.web.metrics`), which reads the queue.
Every name passes `promtool check metrics`: gauges never end in _total, counters always do.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from prometheus_client import REGISTRY, Counter, Histogram

RUN_DURATION = Histogram(
    "tunix_run_duration_seconds",
    "Wall-clock duration of finished runs, from start to terminal state.",
    ["mode", "status"],
    buckets=(0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
DB_WRITE_LATENCY = Histogram(
    "tunix_db_write_latency_seconds",
    "Latency of database writes (statement and commit), by operation.",
    ["operation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

ARTIFACT_BYTES = Counter(
    "tunix_artifact_bytes_total",
    "Bytes of runs' files written to the artifact store (upload) or read from it (download: a worker's "
    "resume, a web process's downloads).",
    ["direction"],
)
ARTIFACT_RETRIES = Counter(
    "tunix_artifact_store_retries_total",
    "Artifact store operations that failed and were tried again (an outage shows here first).",
)
ARTIFACT_GIVEN_UP = Counter(
    "tunix_artifact_store_unavailable_total",
    "Artifact store operations given up after TUNIX_ARTIFACTS_RETRY_SECONDS of failures.",
)
ARTIFACT_REFUSED = Counter(
    "tunix_artifact_integrity_refusals_total",
    "Stored files refused because their size, ETag or SHA-256 differed from what their run recorded.",
)

MODEL_VERSIONS = Counter(
    "tunix_model_versions_registered_total",
    "Model versions registered (registering files that already are a version counts nothing).",
)
ALIAS_MOVES = Counter(
    "tunix_model_alias_moves_total",
    "Moves of registered models' aliases; override=true when an admin moved a protected alias past failing "
    "gates.",
    ["override"],
)
GATE_VERDICTS = Counter(
    "tunix_gate_verdicts_total",
    "Gate verdicts given to candidate runs, by result.",
    ["result"],
)

PLAYGROUND_ANSWERED = Counter(
    "tunix_playground_requests_ended_total",
    "Playground requests a worker ended, by how (completed, failed, cancelled).",
    ["status"],
)
PLAYGROUND_TOKENS = Counter(
    "tunix_playground_generated_tokens_total",
    "Tokens the worker's generation server generated for the playground.",
)
PLAYGROUND_FIRST_TOKEN = Histogram(
    "tunix_playground_time_to_first_token_seconds",
    "From a worker taking a request to its first token; cold=true when the model was loaded and compiled for it.",
    ["cold"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


@contextmanager
def timed_db_write(operation: str) -> Iterator[None]:
    """Time a database write (including its commit) into tunix_db_write_latency_seconds."""
    start = time.perf_counter()
    try:
        yield
    finally:
        DB_WRITE_LATENCY.labels(operation=operation).observe(time.perf_counter() - start)


def observe_run_finished(mode: str, status: str, duration_seconds: float | None) -> None:
    """Record a run that reached a terminal state."""
    if duration_seconds is not None:
        RUN_DURATION.labels(mode=mode, status=status).observe(duration_seconds)


def start_worker_metrics_server(port: int, host: str = "127.0.0.1") -> None:
    """Serve this worker process's metrics on its own port (0 turns it off), on loopback unless told otherwise."""
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, addr=host, registry=REGISTRY)
