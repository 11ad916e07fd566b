"""The HTML pages through the HTTP interface, as a user would use them."""
import io
import re

from sqlalchemy import func, select

from app.extensions import db
from app.models import Dataset, TunixRun
from tests.helpers import SAMPLE, sign_in


def test_home_redirects_to_runs(client):
    assert client.get("/").headers["Location"].endswith("/runs")


def test_new_run_form_defaults_to_tiny_and_the_sample(client):
    html = client.get("/runs/new").get_data(as_text=True)
    assert 'name="model_id" list="model-presets" value="tiny"' in html
    assert f'<option value="{SAMPLE}" selected>' in html
    assert 'value="async" checked' in html


def test_form_submit_async_lands_on_the_run_page(client):
    response = client.post("/runs/new", data={"dataset_key": SAMPLE, "model_id": "tiny", "mode": "async",
                                              "learning_rate": "0.002", "max_steps": ""})
    assert response.status_code == 303
    page = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "pending" in page and "position 1 in the queue" in page
    assert 'hx-trigger="load delay:4000ms, status-poll:retry"' in page and 'data-poll-base-ms="4000"' in page


def test_form_submit_sync_shows_the_finished_run(client):
    response = client.post("/runs/new", data={"dataset_key": SAMPLE, "mode": "sync"}, follow_redirects=True)
    html = response.get_data(as_text=True)
    assert "completed" in html and "fake trainer: 240 examples" in html
    assert "hx-get" not in html  # finished: the page never polls
    assert "<svg" in html  # the loss curve


def test_form_submit_dry_run_shows_the_plan(client):
    html = client.post("/runs/new", data={"dataset_key": SAMPLE, "mode": "dry_run"},
                       follow_redirects=True).get_data(as_text=True)
    assert "<h2>Plan</h2>" in html and "No problems found" in html and "Total steps" in html


def test_invalid_form_shows_messages_next_to_fields_and_keeps_input(client):
    response = client.post("/runs/new", data={"dataset_key": SAMPLE, "mode": "async", "learning_rate": "fast",
                                              "batch_size": "0", "model_id": "tinyy", "seed": "12"})
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert re.search(r'id="learning_rate" name="learning_rate" value="fast"[^>]*aria-invalid="true"', html)
    assert '<p class="field-error" id="learning_rate-error">must be a number, got &#39;fast&#39;</p>' in html
    assert '<p class="field-error" id="batch_size-error">must be at least 1 and at most 4096</p>' in html
    assert 'id="model_id-error">unknown model &#39;tinyy&#39;' in html
    assert 'name="seed" value="12"' in html and 'value="async" checked' in html
    assert db.session.scalar(select(func.count()).select_from(TunixRun)) == 0


def test_forms_need_a_csrf_token(app_config, credentials):
    from app import create_app

    app = create_app({**app_config, "WTF_CSRF_ENABLED": True})
    client = app.test_client()
    assert client.post("/login", data={"username": credentials.username,
                                       "password": credentials.password}).status_code == 400
    sign_in(client, credentials)
    response = client.post("/runs/new", data={"dataset_key": SAMPLE, "mode": "async"})
    assert response.status_code == 400 and b"Reload the page" in response.data
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/runs/new").get_data(as_text=True))[1]
    response = client.post("/runs/new", data={"dataset_key": SAMPLE, "mode": "async", "csrf_token": token})
    assert response.status_code == 303
    # The JSON API is for scripts and carries no CSRF token.
    assert client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).status_code == 202


def test_status_fragment_polls_while_active_and_stops_when_terminal(client):
    run_id = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).get_json()["run_id"]
    fragment = client.get(f"/runs/{run_id}/status").get_data(as_text=True)
    assert fragment.lstrip().startswith('<section id="run-status"')
    assert f'hx-get="/runs/{run_id}/status?log_after=0&amp;seen=pending"' in fragment and 'hx-swap="outerHTML"' in fragment
    assert "<html" not in fragment
    db.session.execute(TunixRun.__table__.update().values(status="running"))
    db.session.commit()
    assert "hx-trigger" in client.get(f"/runs/{run_id}/status").get_data(as_text=True)
    for status in ("completed", "failed", "timeout", "cancelled"):
        db.session.execute(TunixRun.__table__.update().values(status=status))
        db.session.commit()
        fragment = client.get(f"/runs/{run_id}/status").get_data(as_text=True)
        assert "hx-get" not in fragment and "hx-trigger" not in fragment, status
        assert f'data-status="{status}"' in fragment
    assert "hx-trigger" not in client.get(f"/runs/{run_id}").get_data(as_text=True)


def test_runs_list_filters_and_pages(client, app):
    app.config["RUNS_PAGE_SIZE"] = 2
    for _ in range(3):
        client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE})
    client.post("/api/tunix/run?mode=dry_run", json={"dataset_key": SAMPLE})
    first = client.get("/runs?mode=async").get_data(as_text=True)
    assert first.count('<span class="badge status-pending">') == 2
    older = re.search(r'rel="next" href="([^"]+)"', first)[1].replace("&amp;", "&")
    second = client.get(older).get_data(as_text=True)
    assert second.count('<span class="badge status-pending">') == 1 and 'rel="next"' not in second
    assert client.get("/runs?status=completed").get_data(as_text=True).count("status-completed") == 1
    assert "no longer valid" in client.get("/runs?cursor=junk").get_data(as_text=True)


def test_unknown_run_page_is_404(client):
    assert client.get("/runs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert client.get("/runs/nope/status").status_code == 404


def test_clone_prefills_the_form(client):
    run_id = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE, "seed": 77}).get_json()["run_id"]
    html = client.get(f"/runs/new?clone={run_id}").get_data(as_text=True)
    assert 'name="seed" value="77"' in html


def test_dataset_upload_page(client):
    data = {"name": "greetings", "description": "hi",
            "file": (io.BytesIO(b'{"prompt": "hello", "response": "hi"}\n'), "g.jsonl")}
    response = client.post("/datasets", data=data, content_type="multipart/form-data")
    assert response.status_code == 303 and response.headers["Location"].endswith("/datasets/greetings-v1")
    html = client.get("/datasets/greetings-v1").get_data(as_text=True)
    assert "hello" in html and "Examples</dt><dd>1" in html
    assert "greetings-v1" in client.get("/datasets").get_data(as_text=True)


def test_bad_dataset_upload_shows_line_numbers_and_stores_nothing(client):
    data = {"name": "broken", "file": (io.BytesIO(b'{"prompt": "a", "response": "b"}\n{oops\n'), "b.jsonl")}
    response = client.post("/datasets", data=data, content_type="multipart/form-data")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert 'id="file-error">line 2: invalid JSON' in html and 'value="broken"' in html
    assert db.session.scalar(select(func.count()).select_from(Dataset).where(Dataset.name == "broken")) == 0
