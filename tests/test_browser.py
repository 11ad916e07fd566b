"""The run page in a real browser (Debian's chromium via Playwright): polling, its end, backoff, live log."""
import time
import uuid

import pytest
from sqlalchemy import text

from app.extensions import db
from tests.helpers import fake_trainer_command, needs_chromium, sign_in_browser, submit

BASE = 0.5  # seconds between polls in these tests (4 s in production)

pytestmark = needs_chromium


@pytest.fixture(autouse=True)
def fast_polls(app):
    app.config["STATUS_POLL_SECONDS"] = BASE


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
    assert page.get_attribute("#run-status", "hx-get") is None
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


def test_a_run_watched_from_pending_to_completed_needs_no_reload(client, live_server, page, worker_env,
                                                                  start_worker):
    run_id = pending_run(client)
    page.goto(f"{live_server}/runs/{run_id}")
    page.evaluate("window.__sameDocument = true")
    assert page.inner_text("#run-artifacts").strip().endswith("No files yet.")
    start_worker(worker_env(fake_trainer_command("--artifacts", "--sleep", "1")))
    page.wait_for_selector('#run-status[data-status="completed"]', timeout=30_000)
    page.wait_for_function("document.getElementById('run-announcer').innerText.includes('completed')")
    assert page.evaluate("window.__sameDocument") is True, "the page was not reloaded"
    details = page.inner_text("#run-details")
    assert "Attempts\n1 of 1" in details.replace("\t", "\n") and "pending" not in details
    ended = details.split("Ended")[1].strip().splitlines()[0]
    assert ended.endswith("UTC"), details
    assert "Download model" in page.inner_text("#run-artifacts")
    assert "checkpoint at step 3" in page.inner_text("#run-artifacts")
    assert "fake trainer: 240 examples" in page.inner_text("#run-tails")
    assert "fake trainer: 240 examples" in page.inner_text("#run-log")
    assert not page.is_visible("text=No output yet.")


def test_the_runs_list_refreshes_its_active_rows_in_one_request_per_poll(client, live_server, page, worker_env,
                                                                       start_worker):
    finished = submit(client, "sync")["run_id"]
    waiting = [pending_run(client) for _ in range(2)]
    polls = []
    page.on("request", lambda r: polls.append(r.url) if "/runs/rows" in r.url else None)
    page.goto(f"{live_server}/runs")
    page.evaluate("window.__sameDocument = true")
    start_worker(worker_env(fake_trainer_command("--sleep", "0.5")))
    for run_id in waiting:
        page.wait_for_selector(f'#run-row-{run_id} .status-completed', timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True
    assert "1.3333" in page.inner_text(f"#run-row-{waiting[0]}")  # its final loss
    assert polls and all(finished not in url for url in polls), "a finished row is never polled"
    count = len(polls)
    page.wait_for_timeout(int(BASE * 1000 * 5))
    assert len(polls) == count, "the list stops polling once no visible run is active"


def test_the_content_security_policy_leaves_the_pages_working(client, live_server, browser, credentials):
    page = browser.new_page()  # the policy enforced, as for a user
    refused = []
    page.on("console", lambda message: refused.append(message.text)
            if "Content Security Policy" in message.text else None)
    sign_in_browser(page, live_server, credentials)
    run_id = pending_run(client)
    polls = poll_times(page, run_id)
    page.goto(f"{live_server}/runs/{run_id}")
    page.wait_for_selector('#run-status[data-status="pending"]')
    set_status(run_id, "completed")
    page.wait_for_selector('#run-status[data-status="completed"]', timeout=10_000)
    assert polls, "htmx polled under the policy"
    for path in ("/runs", "/runs/new", "/datasets", "/workers", "/settings/tokens"):
        page.goto(live_server + path)
    assert refused == []


def test_two_runs_ticked_in_the_list_open_side_by_side(client, app, live_server, page):
    app.config["TRAIN_COMMAND"] = fake_trainer_command("--steps", "6", "--evaluate")
    first = submit(client, "sync", learning_rate=0.002, name="careful")["run_id"]
    second = submit(client, "sync", learning_rate=0.008, name="bold")["run_id"]
    page.goto(f"{live_server}/runs")
    page.check(f'input[name="ids"][value="{first}"]')
    page.check(f'input[name="ids"][value="{second}"]')
    page.click("text=Compare selected")
    page.wait_for_url(lambda url: "/runs/compare" in url)
    chart = page.locator("figure.chart.compare svg")
    assert chart.is_visible()
    # Both runs' curves, train solid and eval dashed, and a legend entry naming each run.
    for index in (0, 1):
        assert chart.locator(f"polyline.run-{index}.train").count() == 1
        assert chart.locator(f"polyline.run-{index}.eval").get_attribute("stroke-dasharray") == "5 3"
    legend = chart.locator("g.legend-entry text").all_text_contents()
    assert set(legend) == {"careful", "bold"}
    assert page.locator("td.best").first.is_visible()
    assert page.locator('th[scope="row"]', has_text="learning_rate").is_visible()


@pytest.mark.trainer
def test_a_real_sweep_started_from_the_form_ends_with_its_best_trial(client, live_server, page, worker_env,
                                                                    start_worker):
    """Four real `tiny` trials (Tunix on the CPU), chosen by Optuna, run by a worker, watched in the browser."""
    from tests.test_trainer import REAL_TRAINER

    page.goto(f"{live_server}/sweeps/new")
    page.fill("#name", "tiny lr search")
    page.select_option("#objective\\.metric", "final_eval_loss")
    page.fill("#max_trials", "4")
    page.fill("#parallelism", "2")
    page.select_option("#sampler", "random")
    page.fill("input[name='space.learning_rate.low']", "0.001")
    page.fill("input[name='space.learning_rate.high']", "0.02")
    page.fill("#base\\.max_steps", "20")
    page.fill("#base\\.eval_every_n_steps", "10")
    page.fill("#base\\.eval_max_examples", "4")
    page.fill("#base\\.eval_max_new_tokens", "16")
    page.click("button[type=submit] >> text=Start sweep")
    page.wait_for_url(lambda url: "/sweeps/" in url and not url.endswith("/new"))
    page.evaluate("window.__sameDocument = true")
    start_worker(worker_env(REAL_TRAINER))
    page.wait_for_selector('#sweep-status[data-status="completed"]', timeout=400_000)
    assert page.evaluate("window.__sameDocument") is True, "the page followed the sweep without a reload"
    best = page.inner_text("#best-trial")
    assert best.startswith("Best trial: #") and "learning_rate = " in best
    assert page.locator("table.trials tbody tr").count() == 4
    assert page.locator("svg.sweep-chart").count() == 2
    page.click("#best-trial >> text=its run")
    page.wait_for_selector('#run-status[data-status="completed"]')
    assert "tiny lr search" in page.inner_text("#run-details")


def test_unchanged_polls_are_answered_304_and_polling_keeps_its_pace(client, app, live_server, page):
    statuses: list[tuple[float, int]] = []
    inner = app.wsgi_app

    def counting(environ, start_response):
        def record(status, headers, *args):
            if environ["PATH_INFO"].endswith("/status"):
                statuses.append((time.monotonic(), int(status.split()[0])))
            return start_response(status, headers, *args)
        return inner(environ, record)

    app.wsgi_app = counting
    try:
        run_id = pending_run(client)
        page.goto(f"{live_server}/runs/{run_id}")
        deadline = time.monotonic() + 30
        while sum(1 for _, code in statuses if code == 304) < 5 and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        codes = [code for _, code in statuses]
        assert codes.count(304) >= 5, codes  # the browser revalidates; the server renders nothing
        gaps = [b - a for (a, _), (b, _) in zip(statuses, statuses[1:])]
        assert all(gap < BASE * 4 for gap in gaps), gaps  # a 304 is not a failure: no backoff
        assert page.get_attribute("#run-status", "data-poll-failures") is None
        assert "Waiting for a worker" in page.inner_text("#run-status")

        set_status(run_id, "completed")
        page.wait_for_selector('#run-status[data-status="completed"]', timeout=10_000)
        assert page.get_attribute("#run-status", "hx-get") is None
    finally:
        app.wsgi_app = inner


RECORD_STATUS_BLOCKS = """
window.__blocks = [];
const note = () => { const block = document.getElementById('run-status'); if (block) window.__blocks.push(block.outerHTML); };
note();
document.body.addEventListener('htmx:afterSettle', note);
"""


def test_a_retried_run_s_page_follows_that_run_alone_to_its_end(client, live_server, page, worker_env,
                                                                 start_worker):
    """Retry from a finished run's page, then follow the new run live: every status block the page shows
    names the new run alone, and its step count only moves forward (the old page once switched to an
    earlier run's "completed ... step 18 of 18" and stopped polling)."""
    import re

    start_worker(worker_env(fake_trainer_command("--steps", "5", "--sleep", "1", "--artifacts")))
    first = pending_run(client)
    page.goto(f"{live_server}/runs/{first}")
    page.wait_for_selector('#run-status[data-status="completed"]', timeout=30_000)
    for _ in range(2):  # retries of retries: each new run passes the versions its predecessor did
        page.click("#run-status button:has-text('Retry')")
        page.wait_for_url(lambda url: f"/runs/{first}" not in url)
        retried = page.url.rsplit("/", 1)[1]
        page.evaluate(RECORD_STATUS_BLOCKS)
        page.wait_for_selector('#run-status[data-status="completed"]', timeout=30_000)
        # The block is in the page once swapped; it is recorded when htmx has settled it, a moment later.
        page.wait_for_function("window.__blocks.length && "
                               "window.__blocks[window.__blocks.length - 1].includes('data-status=\"completed\"')")
        blocks = page.evaluate("window.__blocks")
        assert len(blocks) >= 2, "the page followed the run live"
        steps = []
        for block in blocks:
            assert set(re.findall(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", block)) <= {retried}
            steps += [int(s) for s in re.findall(r"step (\d+) of 5", block)]
        assert steps == sorted(steps), steps
        assert f'action="/runs/{retried}/retry"' in blocks[-1]
        assert client.get(f"/api/tunix/runs/{retried}").get_json()["retry_of"] == first
        first = retried


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_double_click_on_start_run_starts_one_run(client, app, live_server, page, mode):
    app.config["TRAIN_COMMAND"] = fake_trainer_command("--sleep", "5")  # the panel reads every 2 s meanwhile
    posts, progress = [], []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and r.url.endswith("/runs/new") else None)

    def read_progress(route):
        answer = route.fetch()
        progress.append(answer.text())
        route.fulfill(response=answer)

    page.route("**/runs/submitted/**", read_progress)
    page.goto(f"{live_server}/runs/new")
    page.check(f"input[name=mode][value={mode}]")
    page.dblclick("button[type=submit] >> text=Start run", no_wait_after=True)
    page.wait_for_url(lambda url: "/runs/new" not in url, timeout=30_000)
    runs = client.get("/api/tunix/runs").get_json()["runs"]
    assert len(runs) == 1 and runs[0]["mode"] == mode
    assert page.url.endswith(runs[0]["run_id"])
    assert len(posts) == 1, "the second click sent nothing"
    if mode == "sync":
        # While the run was carried out in the request, the form's panel read how it was coming along.
        assert any(f"Run {runs[0]['run_id'][:8]}</strong>: running" in body for body in progress), progress
    else:
        assert progress == []  # a queued run's page opens at once


def test_lora_settings_show_only_with_lora_and_tables_say_they_scroll(client, live_server, page):
    page.goto(f"{live_server}/runs/new")
    assert not page.is_visible("#lora_rank")
    page.select_option("#finetune", "lora")
    assert page.is_visible("#lora_rank") and page.is_visible("#lora_alpha")
    page.select_option("#finetune", "full")
    assert not page.is_visible("#lora_rank")
    run_id = submit(client, "dry_run")["run_id"]
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{live_server}/runs/{run_id}")
    assert page.is_visible(".scroll-cue[data-shown]")
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"{live_server}/runs/{run_id}")
    assert not page.is_visible(".scroll-cue[data-shown]")


def test_a_new_token_can_be_copied(browser, live_server, credentials):
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    sign_in_browser(page, live_server, credentials)
    page.goto(f"{live_server}/settings/tokens")
    page.fill("#label", "laptop")
    page.click("button >> text=Create a token")
    secret = page.inner_text("#new-token").strip()
    page.click("button[data-copy=new-token]")
    page.wait_for_selector("button[data-copy=new-token] >> text=Copied")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    assert f"Bearer {secret}" in page.inner_text("#new-token-curl")
    context.close()
