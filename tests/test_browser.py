"""The run page in a real browser (Debian's chromium via Playwright): polling, its end, backoff, live log."""
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text

from app.extensions import db
from tests.helpers import submit

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
BASE = 0.5  # seconds between polls in these tests (4 s in production)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (make test "
                                                              "installs it when run as root)")


@pytest.fixture
def live_server(app):
    from werkzeug.serving import make_server

    app.config["STATUS_POLL_SECONDS"] = BASE
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser.new_page()
        browser.close()


def pending_run(client) -> str:
    return submit(client)["run_id"]


def set_status(run_id: str, status: str) -> None:
    db.session.execute(text("UPDATE tunix_runs SET status = :s WHERE id = :id"), {"s": status, "id": run_id})
    db.session.commit()


def poll_times(page, run_id: str) -> list[float]:
    times: list[float] = []
    page.on("request", lambda r: times.append(time.monotonic()) if f"/runs/{run_id}/status" in r.url else None)
    return times


def test_polls_while_active_and_stops_at_a_terminal_state(client, live_server, page):
    run_id = pending_run(client)
    times = poll_times(page, run_id)
    page.goto(f"{live_server}/runs/{run_id}")
    deadline = time.monotonic() + 20
    while len(times) < 4 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert len(times) >= 4, "the page polls while the run is pending"
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(BASE * 0.8 < gap < BASE * 4 for gap in gaps), gaps

    set_status(run_id, "completed")
    page.wait_for_selector('#run-status[data-status="completed"]', timeout=10_000)
    assert "no longer refreshes" in page.inner_text("#run-status")
    seen = len(times)
    page.wait_for_timeout(int(BASE * 1000 * 6))
    assert len(times) == seen, "polling stopped once the run was terminal"
    assert page.get_attribute("#run-status", "hx-get") is None


def test_failed_polls_back_off_and_a_success_restores_the_pace(client, live_server, page):
    run_id = pending_run(client)
    times: list[float] = []
    failures = {"left": 3}

    def handle(route):
        times.append(time.monotonic())
        if failures["left"]:
            failures["left"] -= 1
            route.fulfill(status=503, body="database unavailable")
        else:
            route.continue_()

    page.route(f"**/runs/{run_id}/status**", handle)
    page.goto(f"{live_server}/runs/{run_id}")
    deadline = time.monotonic() + 30
    while len(times) < 6 and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert len(times) >= 6
    gaps = [b - a for a, b in zip(times, times[1:])]
    # After failures 1, 2, 3 the waits are 2, 4 and 8 times the base; after a success, the base again.
    for gap, factor in zip(gaps[:3], (2, 4, 8)):
        assert BASE * factor * 0.85 < gap < BASE * factor * 1.6, (gaps, factor)
    assert gaps[3] < BASE * 1.8, gaps
    assert page.get_attribute("#run-status", "data-poll-failures") is None  # a fresh fragment, no failures


def test_live_output_is_appended_in_order(client, live_server, page):
    run_id = pending_run(client)
    set_status(run_id, "running")
    page.goto(f"{live_server}/runs/{run_id}")
    for seq, line in enumerate(["first line", "second line", "third line"], start=1):
        db.session.execute(text("INSERT INTO run_log_chunks VALUES (:id, :seq, 'stdout', :t, now())"),
                           {"id": uuid.UUID(run_id), "seq": seq, "t": line + "\n"})
        db.session.commit()
        page.wait_for_function(f"document.getElementById('run-log').innerText.includes('{line}')", timeout=10_000)
    page.wait_for_timeout(int(BASE * 1000 * 3))  # more polls bring nothing new
    assert page.inner_text("#run-log").split("\n")[:3] == ["first line", "second line", "third line"]
    assert page.inner_text("#run-log").count("first line") == 1
