"""`/metrics`: request metrics, and the queue's gauges read from the database at scrape time.

Under gunicorn, PROMETHEUS_MULTIPROC_DIR is set (see gunicorn.conf.py) and every
process writes its samples there; /metrics aggregates them. Workers serve their own
metrics on TUNIX_WORKER_METRICS_PORT (`app.instruments`). The queue gauges (runs by status,
oldest pending run, workers alive, recoveries, sweeps) come from the database at scrape time,
so they count what every web process and every worker did.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Callable

from flask import Flask, Response, request
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_flask_exporter import PrometheusMetrics

from app.models import SWEEP_STATUSES, TRIAL_STATES
from app.queue import registry as worker_registry
from app.run_states import MODES, STATUSES, TERMINAL_STATUSES
from app.sweeps import queries as sweep_queries

# Request durations: a sync submission runs for minutes, up to the run timeout (1 h by default).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


def url_rule(request) -> str:
    """The route a request matched, or one stable label for all that matched none (404s)."""
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


class _QueueCollector:
    """Gauges read from the database at scrape time (cached briefly): they count what every
    web process and every worker did, on any host."""

    def __init__(self, read_stats: Callable[[], object], cache_seconds: float):
        self._read_stats = read_stats
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, object] | None = None

    def stats(self):
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self._cache_seconds:
                self._cached = (now, self._read_stats())
            return self._cached[1]

    def collect(self):
        stats, sweeps = self.stats()
        runs = GaugeMetricFamily("tunix_runs", "Number of runs in each status, by mode.", labels=["status", "mode"])
        depth = GaugeMetricFamily("tunix_queue_depth", "Runs not yet finished, by status.", labels=["status"])
        for status in STATUSES:
            for mode in MODES:
                runs.add_metric([status, mode], stats.runs.get((status, mode), 0))
            if status not in TERMINAL_STATUSES:
                depth.add_metric([status], sum(stats.runs.get((status, m), 0) for m in MODES))
        yield runs
        yield depth
        yield GaugeMetricFamily("tunix_queue_oldest_pending_age_seconds",
                                "Age of the oldest pending run (0 when none waits).",
                                value=stats.oldest_pending_age_seconds)
        yield GaugeMetricFamily("tunix_workers_alive", "Workers that heartbeated within the lease timeout.",
                                value=stats.workers_alive)
        devices = GaugeMetricFamily("tunix_devices", "Devices of the live workers, by kind and whether a run holds "
                                    "them.", labels=["kind", "state"])
        for (kind, state), count in sorted(stats.devices.items()):
            devices.add_metric([kind, state], count)
        yield devices
        playground = GaugeMetricFamily("tunix_playground_requests", "Playground requests waiting or being answered.",
                                       labels=["status"])
        for status, count in sorted(stats.playground.items()):
            playground.add_metric([status], count)
        yield playground
        yield GaugeMetricFamily("tunix_playground_oldest_waiting_seconds",
                                "Age of the oldest playground request waiting for a worker (0 when none waits).",
                                value=stats.playground_oldest_waiting_seconds)
        # Recoveries only grow (the database keeps every run), so they are a counter.
        yield CounterMetricFamily("tunix_runs_recovered", "Times a run was recovered from a lost worker.",
                                  value=stats.runs_recovered)
        by_status = GaugeMetricFamily("tunix_sweeps", "Sweeps in each status.", labels=["status"])
        for status in SWEEP_STATUSES:
            by_status.add_metric([status], sweeps["sweeps"].get(status, 0))
        yield by_status
        trials = GaugeMetricFamily("tunix_sweep_trials", "Sweep trials in each state.", labels=["state"])
        for state in TRIAL_STATES:
            trials.add_metric([state], sweeps["trials"].get(state, 0))
        yield trials


class _Chain:
    """A collector that re-exports what other registries hold."""

    def __init__(self, *registries: CollectorRegistry):
        self._registries = registries

    def collect(self):
        for registry in self._registries:
            yield from registry.collect()


def _multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def init_app(app: Flask) -> None:
    """Attach request metrics (prometheus-flask-exporter) and the /metrics endpoint."""
    exporter_registry = CollectorRegistry(auto_describe=True)
    PrometheusMetrics(app, path=None, registry=exporter_registry, group_by=url_rule, buckets=REQUEST_BUCKETS,
                      excluded_paths=["^/static/", "^/metrics$"])
    lease = app.config["LEASE_TIMEOUT_SECONDS"]
    queue = _QueueCollector(lambda: (worker_registry.queue_stats(lease), sweep_queries.counts()),
                            app.config["METRICS_CACHE_SECONDS"])

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        registry = CollectorRegistry(auto_describe=False)
        if _multiprocess_enabled():
            multiprocess.MultiProcessCollector(registry)
        else:
            registry.register(_Chain(REGISTRY, exporter_registry))
        registry.register(queue)
        encoder, content_type = choose_encoder(request.headers.get("Accept"))
        return Response(encoder(registry), content_type=content_type)
