"""`make run`: migrate, seed the sample dataset, then serve gunicorn and one worker until Ctrl-C.

When DATABASE_URL is unset, the embedded Postgres under instance/ is started first and
stopped at the end.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from app.config import PROJECT_ROOT, instance_dir

log = logging.getLogger("tunix_rt.dev_runner")


def _prepare_database() -> tuple[bool, str | None]:
    """Point DATABASE_URL at a server, migrate it, seed it; (whether we started the embedded one,
    the first admin's password when this start created it)."""
    started_embedded = False
    if not os.environ.get("DATABASE_URL"):
        from app.dev.embedded_postgres import embedded_database_url

        os.environ["DATABASE_URL"] = embedded_database_url(instance_dir())
        started_embedded = True
        log.info("DATABASE_URL unset: using the embedded Postgres in %s", instance_dir() / "pgdata")
    from flask_migrate import upgrade

    from app import create_app
    from app.accounts.service import ensure_first_admin
    from app.datasets.sample import ensure_sample_dataset

    app = create_app()
    with app.app_context():
        upgrade()
        ensure_sample_dataset()
        password = ensure_first_admin()
    return started_embedded, password


def _start(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=PROJECT_ROOT, env=env)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started_embedded, first_password = _prepare_database()
    port = os.environ.get("PORT", "8000")
    web_env = dict(os.environ, PORT=port)
    worker_env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    worker_env.setdefault("TUNIX_WORKER_METRICS_PORT", "9101")
    bin_dir = os.path.dirname(sys.executable)
    children = [
        _start([os.path.join(bin_dir, "gunicorn"), "-c", "gunicorn.conf.py", "wsgi:app"], web_env),
        _start([sys.executable, "worker.py"], worker_env),
    ]
    log.info("Tunix RT on http://127.0.0.1:%s (worker metrics on :%s); Ctrl-C stops both",
             port, worker_env["TUNIX_WORKER_METRICS_PORT"])
    if first_password:
        # Printed once, on this console only: the database keeps only its hash.
        print(f"\n  First start: sign in at http://127.0.0.1:{port}/login as admin with password {first_password}\n"
              f"  (more users: .venv/bin/flask --app wsgi users create NAME)\n", flush=True)

    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(child.poll() is None for child in children):
        time.sleep(0.5)
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    code = 0
    for child in children:
        try:
            child.wait(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        code = code or (child.returncode if not stopping else 0)
    if started_embedded:
        from app.dev.embedded_postgres import stop_embedded_database

        stop_embedded_database(instance_dir())
    return code


if __name__ == "__main__":
    sys.exit(main())
