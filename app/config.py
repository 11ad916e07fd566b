"""Every setting of Tunix RT, read from the environment in this one place."""
from __future__ import annotations

import os
import secrets
import shlex
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _number(name: str, default, cast):
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        kind = "an integer" if cast is int else "a number"
        raise RuntimeError(f"setting {name} must be {kind}, got {raw!r}") from None


def _int(name: str, default: int) -> int:
    return _number(name, default, int)


def _float(name: str, default: float) -> float:
    return _number(name, default, float)


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    return raw.strip().lower() not in ("0", "false", "no", "off")


def instance_dir() -> Path:
    """Where local state lives: the embedded database, artifacts, the secret key."""
    path = Path(os.environ.get("TUNIX_INSTANCE_DIR", PROJECT_ROOT / "instance"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _secret_key() -> str:
    # Every gunicorn process and every restart must sign CSRF tokens with the
    # same key, so a generated key is kept in the instance folder.
    if os.environ.get("SECRET_KEY"):
        return os.environ["SECRET_KEY"]
    key_file = instance_dir() / "secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_hex(32))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


def default_train_command() -> list[str]:
    """The trainer command line, without the run directory that is appended to it."""
    raw = os.environ.get("TUNIX_TRAIN_COMMAND", "").strip()
    if raw:
        return shlex.split(raw)
    return [sys.executable, "-m", "app.trainer"]


def _command(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name, "").strip()
    return shlex.split(raw) if raw else default


def device_probe_command() -> list[str]:
    """What a worker runs once to find its devices (in the trainer's interpreter); empty: do not probe."""
    raw = os.environ.get("TUNIX_DEVICE_PROBE_COMMAND")
    if raw is not None:
        return shlex.split(raw)
    return [sys.executable, "-m", "app.trainer.device_probe"]


def load_settings() -> dict:
    """The Flask config mapping built from the environment."""
    return {
        "SECRET_KEY": _secret_key(),
        # None means: start (or reuse) the embedded Postgres under instance/.
        "DATABASE_URL": os.environ.get("DATABASE_URL") or None,
        # One connection per request thread (gunicorn's GUNICORN_THREADS) plus one for the metrics scrape:
        # a smaller pool closes and reopens connections under load.
        "DB_POOL_SIZE": _int("TUNIX_DB_POOL_SIZE", _int("GUNICORN_THREADS", 8) + 1),
        "DB_MAX_OVERFLOW": _int("TUNIX_DB_MAX_OVERFLOW", 5),
        # A pooled connection idle this long is checked with a round trip before use; busy ones are not.
        "DB_PING_IDLE_SECONDS": _float("TUNIX_DB_PING_IDLE_SECONDS", 1.0),
        # How often a worker recounts the run counts exactly (they are kept by a trigger meanwhile).
        "COUNTS_RECONCILE_SECONDS": _float("TUNIX_COUNTS_RECONCILE_SECONDS", 3600.0),
        # JAX's persistent compilation cache, shared by the trainers a host starts ("" turns it off).
        "COMPILATION_CACHE_DIR": os.environ.get("TUNIX_COMPILATION_CACHE_DIR",
                                                str(instance_dir() / "jax-compilation-cache")),
        "ARTIFACTS_ROOT": os.environ.get("TUNIX_ARTIFACTS_ROOT") or str(instance_dir() / "artifacts"),
        # Where runs' files are stored: s3://bucket/prefix, gs://bucket/prefix, or a local folder
        # (empty: ARTIFACTS_ROOT). Recorded on each run when it is submitted.
        "ARTIFACTS_URL": os.environ.get("TUNIX_ARTIFACTS_URL", ""),
        # An S3-compatible server's address (MinIO, Garage, Ceph, R2); empty: AWS itself.
        "S3_ENDPOINT_URL": os.environ.get("TUNIX_S3_ENDPOINT_URL", ""),
        # How long a store operation is retried through an outage before the run fails for it.
        "ARTIFACTS_RETRY_SECONDS": _float("TUNIX_ARTIFACTS_RETRY_SECONDS", 300.0),
        # Downloads redirect to a presigned URL of the bucket, good this long, instead of streaming through us.
        "ARTIFACTS_PRESIGN": _flag("TUNIX_ARTIFACTS_PRESIGN", False),
        "ARTIFACTS_PRESIGN_SECONDS": _int("TUNIX_ARTIFACTS_PRESIGN_SECONDS", 300),
        # On S3, a stored object's ETag is checked against the MD5 of the bytes sent; buckets encrypted with
        # SSE-KMS give other ETags: turn it off there (the size is checked either way).
        "ARTIFACTS_CHECK_ETAG": _flag("TUNIX_ARTIFACTS_CHECK_ETAG", True),
        # `flask artifacts gc` deletes the checkpoints (all but the last) of runs finished this long ago.
        "ARTIFACTS_CHECKPOINT_RETENTION_DAYS": _float("TUNIX_ARTIFACTS_CHECKPOINT_RETENTION_DAYS", 14.0),
        # The local folder a worker (or a web process running a sync run) trains in before it stores.
        "SCRATCH_DIR": os.environ.get("TUNIX_SCRATCH_DIR") or str(instance_dir() / "scratch"),
        "OUTPUT_MAX_BYTES": _int("TUNIX_OUTPUT_MAX_BYTES", 10240),
        "RUN_TIMEOUT_SECONDS": _float("TUNIX_RUN_TIMEOUT_SECONDS", 3600.0),
        "KILL_GRACE_SECONDS": _float("TUNIX_KILL_GRACE_SECONDS", 10.0),
        "TRAIN_COMMAND": default_train_command(),
        # With LISTEN/NOTIFY an idle worker wakes at once; this poll only covers missed notifications.
        "WORKER_POLL_SECONDS": _float("TUNIX_WORKER_POLL_SECONDS", 5.0),
        "WORKER_LISTEN": os.environ.get("TUNIX_WORKER_LISTEN", "1").strip().lower() not in ("0", "false", "no"),
        "HEARTBEAT_SECONDS": _float("TUNIX_HEARTBEAT_SECONDS", 10.0),
        "LEASE_TIMEOUT_SECONDS": _float("TUNIX_LEASE_TIMEOUT_SECONDS", 60.0),
        "WORKER_SHUTDOWN_GRACE_SECONDS": _float("TUNIX_WORKER_SHUTDOWN_GRACE_SECONDS", 30.0),
        "DEVICE_PROBE_COMMAND": device_probe_command(),
        # The device ids a worker places runs on ("" = all it finds); worker.py's --devices overrides it.
        "WORKER_DEVICES": os.environ.get("TUNIX_WORKER_DEVICES", ""),
        # How long a run that fits a worker may be passed over by younger, smaller runs before that worker
        # starts nothing younger than it (the placement policy; docs/queue.md).
        "PLACEMENT_PASSOVER_SECONDS": _float("TUNIX_PLACEMENT_PASSOVER_SECONDS", 300.0),
        # The playground (README, "The playground"): whether a worker answers it (share: on one of its devices,
        # between runs; only: never trains; off), how long a request waits before it fails, how many one user
        # may have waiting, how long a request for a held model may pass older ones, how long a waiting run
        # lets the playground go first, and the models a worker keeps loaded (a count, and a share of a
        # device's memory).
        "WORKER_PLAYGROUND": os.environ.get("TUNIX_WORKER_PLAYGROUND", "share").strip().lower() or "share",
        "GENERATE_COMMAND": _command("TUNIX_GENERATE_COMMAND", [sys.executable, "-m", "app.trainer.serve"]),
        "PLAYGROUND_WAIT_SECONDS": _float("TUNIX_PLAYGROUND_WAIT_SECONDS", 600.0),
        "PLAYGROUND_MAX_WAITING": _int("TUNIX_PLAYGROUND_MAX_WAITING", 10),
        "PLAYGROUND_PREFER_SECONDS": _float("TUNIX_PLAYGROUND_PREFER_SECONDS", 10.0),
        "PLAYGROUND_PASSOVER_SECONDS": _float("TUNIX_PLAYGROUND_PASSOVER_SECONDS", 60.0),
        "PLAYGROUND_TIMEOUT_SECONDS": _float("TUNIX_PLAYGROUND_TIMEOUT_SECONDS", 600.0),
        "PLAYGROUND_MODELS": _int("TUNIX_PLAYGROUND_MODELS", 2),
        "PLAYGROUND_MEMORY_FRACTION": _float("TUNIX_PLAYGROUND_MEMORY_FRACTION", 0.5),
        "LOG_MAX_BYTES": _int("TUNIX_LOG_MAX_BYTES", 5 * 1024 * 1024),
        "LOG_TAIL_LINES": _int("TUNIX_LOG_TAIL_LINES", 200),
        "WORKER_METRICS_PORT": _int("TUNIX_WORKER_METRICS_PORT", 0),
        # Loopback by default: a scraper elsewhere needs an explicit address (and a firewall rule).
        "WORKER_METRICS_HOST": os.environ.get("TUNIX_WORKER_METRICS_HOST", "127.0.0.1"),
        "MAX_CONTENT_LENGTH": _int("TUNIX_MAX_UPLOAD_BYTES", 32 * 1024 * 1024),
        "RUNS_PAGE_SIZE": _int("TUNIX_RUNS_PAGE_SIZE", 25),
        # Local checkpoints may only come from under these folders (empty: instance/models and the artifacts root).
        "MODEL_ROOTS": [p for p in os.environ.get("TUNIX_MODEL_ROOTS", "").split(":") if p.strip()],
        # Aliases that start protected when first set: only admins move them, and only to a version whose run
        # passed every gate (or with an override and a reason). An admin may change it per alias.
        "PROTECTED_ALIASES": [a.strip() for a in os.environ.get("TUNIX_PROTECTED_ALIASES", "champion").split(",")
                              if a.strip()],
        "STATUS_POLL_SECONDS": _float("TUNIX_STATUS_POLL_SECONDS", 4.0),
        "METRICS_CACHE_SECONDS": _float("TUNIX_METRICS_CACHE_SECONDS", 5.0),
        # Sign-in: this many failures per username or per address within the window pause it (429).
        "SIGNIN_MAX_FAILURES": _int("TUNIX_SIGNIN_MAX_FAILURES", 10),
        "SIGNIN_WINDOW_SECONDS": _float("TUNIX_SIGNIN_WINDOW_SECONDS", 900.0),
        "SESSION_COOKIE_SAMESITE": "Lax",
        # Host names this service answers to (DNS rebinding): set it to the name nginx serves.
        "TRUSTED_HOSTS": [h.strip() for h in os.environ.get("TUNIX_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")
                          if h.strip()] or None,
        # A sync run holds a request (a gunicorn thread) for its whole training: only short ones may.
        "SYNC_MAX_SECONDS": _float("TUNIX_SYNC_MAX_SECONDS", 300.0),
        # Every active run of a user counts, a sweep's trials included; sweeps wait for room below it.
        "MAX_ACTIVE_RUNS_PER_USER": _int("TUNIX_MAX_ACTIVE_RUNS_PER_USER", 20),
        "MAX_ACTIVE_SWEEPS_PER_USER": _int("TUNIX_MAX_ACTIVE_SWEEPS_PER_USER", 5),
        # A page session ends this long after sign-in, or after this long unused.
        "SESSION_MAX_SECONDS": _float("TUNIX_SESSION_MAX_SECONDS", 7 * 24 * 3600.0),
        "SESSION_IDLE_SECONDS": _float("TUNIX_SESSION_IDLE_SECONDS", 12 * 3600.0),
        # Sync runs each hold a web thread (2 gunicorn processes x 8 threads by default): they stay well
        # below that count, so pages and polls always find a thread.
        "MAX_SYNC_RUNS": _int("TUNIX_MAX_SYNC_RUNS", 6),
        "MAX_SYNC_RUNS_PER_USER": _int("TUNIX_MAX_SYNC_RUNS_PER_USER", 2),
        "MAX_FORM_PARTS": _int("TUNIX_MAX_FORM_PARTS", 1000),
        # Addresses whose X-Forwarded-* headers are believed: the nginx in front.
        # None by default: behind gunicorn alone, X-Forwarded-For is a client's word. With nginx in front,
        # name its address (127.0.0.1 when it runs on the web host).
        "TRUSTED_PROXIES": [a.strip() for a in os.environ.get("TUNIX_TRUSTED_PROXIES", "").split(",")
                            if a.strip()],
        # One upload may hold at most this many examples, each at most this many bytes as a JSON line.
        "DATASET_MAX_EXAMPLES": _int("TUNIX_DATASET_MAX_EXAMPLES", 200_000),
        "DATASET_MAX_EXAMPLE_BYTES": _int("TUNIX_DATASET_MAX_EXAMPLE_BYTES", 1024 * 1024),
        "SESSION_COOKIE_HTTPONLY": True,
    }
