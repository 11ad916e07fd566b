"""The execution module against real subprocesses: no database involved."""
import json
import os
import sys
import time

import pytest

from app.contract.run_files import DATASET_FILE, RUN_CONFIG_FILE
from app.datasets.parsing import Example
from app.execution.run_directory import write_run_directory
from app.execution.tunix_execution import (ExecutionSettings, execute_tunix_run_sync, parse_execution_result,
                                           run_tunix_subprocess, truncate_output)
from tests.helpers import fake_trainer_command


@pytest.fixture
def run_dir(tmp_path):
    return write_run_directory(tmp_path / "run-1", "run-1", {"model_id": "tiny", "learning_rate": 0.01},
                               [Example("p", "r"), Example("p2", "r2")])


def _settings(command, tmp_path, timeout=30.0, max_bytes=10240):
    return ExecutionSettings(tuple(command), tmp_path, timeout, max_bytes, kill_grace_seconds=1.0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; it only waits for its parent to collect it.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"


def test_run_directory_holds_config_and_dataset(run_dir):
    assert json.loads((run_dir / RUN_CONFIG_FILE).read_text())["run_id"] == "run-1"
    lines = (run_dir / DATASET_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"prompt": "p", "response": "r"},
                                                    {"prompt": "p2", "response": "r2"}]


def test_completed_run_reports_events_and_output(run_dir, tmp_path):
    seen = []
    result = execute_tunix_run_sync(run_dir, _settings(fake_trainer_command("--steps", "4"), tmp_path),
                                    on_event=seen.append)
    assert result.status == "completed" and result.exit_code == 0 and result.error_message is None
    assert [e["event"] for e in seen] == ["start", "step", "step", "step", "step", "eval", "end"]
    assert "fake trainer: 2 examples" in result.stdout
    assert '"event"' not in result.stdout  # protocol lines go to metrics, not to the log tail
    assert result.summary["final_loss"] == 1.0 and result.summary["total_steps"] == 4


def test_failure_carries_exit_code_and_last_stderr_line(run_dir, tmp_path):
    result = execute_tunix_run_sync(run_dir, _settings(fake_trainer_command("--exit-code", "3"), tmp_path))
    assert result.status == "failed" and result.exit_code == 3
    assert result.error_message == "trainer exited with code 3: fake trainer: failing on purpose with code 3"


def test_timeout_kills_the_whole_process_group(run_dir, tmp_path):
    started = time.monotonic()
    result = execute_tunix_run_sync(
        run_dir, _settings(fake_trainer_command("--spawn-child", "--sleep", "60"), tmp_path, timeout=2.0))
    assert time.monotonic() - started < 15
    assert result.status == "timeout"
    assert result.error_message == "timed out after 2 s; the trainer's process group was killed"
    pids = json.loads((run_dir / "pids.json").read_text())
    assert len(pids) == 2
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids), "trainer or its child survived the timeout"


def test_output_tails_are_capped_with_a_notice(run_dir, tmp_path):
    result = execute_tunix_run_sync(
        run_dir, _settings(fake_trainer_command("--stdout-bytes", "50000"), tmp_path, max_bytes=1024))
    assert result.status == "completed"
    assert len(result.stdout.encode()) <= 1024
    assert result.stdout.startswith("[... ") and "earlier bytes truncated ...]" in result.stdout
    assert result.stdout.rstrip().endswith("x" * 99)


def test_truncation_keeps_whole_characters():
    text = truncate_output(("é" * 100).encode(), 0, 80)
    assert len(text.encode()) <= 80 and "\ufffd" not in text
    assert truncate_output(b"short", 0, 80) == "short"


def test_a_missing_trainer_is_a_clear_failure(run_dir, tmp_path):
    result = execute_tunix_run_sync(run_dir, _settings(["/nonexistent/trainer"], tmp_path))
    assert result.status == "failed" and result.exit_code is None
    assert result.error_message.startswith("could not start the trainer (/nonexistent/trainer): ")


def test_killed_trainer_is_explained(run_dir, tmp_path):
    command = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    settings = _settings(command, tmp_path, timeout=30, max_bytes=100)
    outcome = run_tunix_subprocess(run_dir, settings)
    result = parse_execution_result(outcome, settings)
    assert result.status == "failed" and result.exit_code == -9
    assert result.error_message == "killed by SIGKILL (likely out of memory)"


def test_two_trainers_never_write_one_run_directory(run_dir, tmp_path):
    """A second execution on a directory a trainer still writes waits for that trainer to be gone (its
    caller's ticks go on, so its lease stays alive), then runs; a stop while waiting starts nothing."""
    import threading

    from app.execution.tunix_execution import StopRequest
    from tests.helpers import processes_mentioning

    release = tmp_path / "release"
    holding = _settings(fake_trainer_command("--wait-for", str(release)), tmp_path)
    first = {}
    holder = threading.Thread(target=lambda: first.update(outcome=run_tunix_subprocess(run_dir, holding)))
    holder.start()
    deadline = time.monotonic() + 60
    while not (run_dir / "pids.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    seen: list[int] = []

    def tick():
        # The first trainer runs until this waiting execution has looked: then it is let go.
        seen.append(len(processes_mentioning(str(run_dir))))
        release.touch()
        return None

    second = run_tunix_subprocess(run_dir, _settings(fake_trainer_command(), tmp_path), on_tick=tick,
                                  tick_seconds=0.1)
    holder.join()
    assert first["outcome"].exit_code == 0 and second.exit_code == 0
    assert seen[0] == 1, "it waited while the first trainer ran"
    assert max(seen) <= 1, seen  # never two trainers on the directory at once

    release.unlink()
    (run_dir / "pids.json").unlink()
    holder = threading.Thread(target=lambda: first.update(outcome=run_tunix_subprocess(run_dir, holding)))
    holder.start()
    while not (run_dir / "pids.json").exists() and time.monotonic() < deadline + 60:
        time.sleep(0.05)
    stopped = run_tunix_subprocess(run_dir, holding, on_tick=lambda: StopRequest("lease lost", 1.0))
    release.touch()
    holder.join()
    assert stopped.stop_reason == "lease lost" and stopped.exit_code is None


def test_two_executions_of_one_run_in_folders_of_their_own_never_train_at_once(run_dir, tmp_path):
    """A worker gives each execution a scratch folder of its own and one lock per run beside them: a second
    execution of the run (a claim a crash of Postgres undid, say) waits for the first trainer to be gone,
    and the lock's file goes with the last holder."""
    import shutil
    import threading

    from tests.helpers import processes_mentioning

    other_dir = tmp_path / "second-execution"
    shutil.copytree(run_dir, other_dir)
    lock_path = tmp_path / "run-1.lock"
    release = tmp_path / "release"
    first = {}
    holder = threading.Thread(target=lambda: first.update(outcome=run_tunix_subprocess(
        run_dir, _settings(fake_trainer_command("--wait-for", str(release)), tmp_path), lock_path=lock_path)))
    holder.start()
    deadline = time.monotonic() + 60
    while not (run_dir / "pids.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    seen: list[tuple[int, int]] = []

    def tick():
        seen.append((len(processes_mentioning(str(run_dir))), len(processes_mentioning(str(other_dir)))))
        release.touch()
        return None

    second = run_tunix_subprocess(other_dir, _settings(fake_trainer_command(), tmp_path), on_tick=tick,
                                  tick_seconds=0.1, lock_path=lock_path)
    holder.join()
    assert first["outcome"].exit_code == 0 and second.exit_code == 0
    assert seen[0] == (1, 0), "the second waited while the first trainer ran"
    assert all(a + b <= 1 for a, b in seen), seen
    assert not lock_path.exists()
