"""Every stored time is the time of its event, not the start of a transaction that stayed open."""
import sys
import uuid

from app.extensions import db
from app.models import TunixRun
from tests.helpers import run_status, submit

# A trainer that says nothing and takes three seconds: no progress write ends a transaction meanwhile.
SILENT_THREE_SECONDS = [sys.executable, "-c", "import time; time.sleep(3)"]


def _assert_took_about_three_seconds(run_id: str) -> None:
    db.session.rollback()
    run = db.session.get(TunixRun, uuid.UUID(run_id))
    assert run.status == "completed"
    # The lower bound is what matters: the trainer slept 3 s, so nothing shorter is the truth.
    assert 3.0 <= run.duration_seconds < 60.0, run.duration_seconds
    stamped = (run.completed_at - run.started_at).total_seconds()
    assert abs(stamped - run.duration_seconds) < 0.5, (stamped, run.duration_seconds)
    assert run.heartbeat_at >= run.started_at


def test_a_sync_run_of_three_seconds_is_stored_as_three_seconds(client, app):
    app.config.update(TRAIN_COMMAND=SILENT_THREE_SECONDS)
    run_id = submit(client, "sync")["run_id"]
    _assert_took_about_three_seconds(run_id)


def test_a_worker_run_of_three_seconds_is_stored_as_three_seconds(client, worker_env, start_worker):
    run_id = submit(client)["run_id"]
    start_worker(worker_env(SILENT_THREE_SECONDS), "--exit-when-idle").wait(timeout=60)
    assert run_status(client, run_id) == "completed"
    _assert_took_about_three_seconds(run_id)

