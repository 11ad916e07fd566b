"""Accounts: sign-in for pages, bearer tokens for the API, ownership, sign-in limits, the CLI, headers."""
import hashlib
import os
import re
import subprocess
import sys

import pytest
from sqlalchemy import func, select, text

from app.extensions import db
from app.models import ApiToken, TunixRun
from tests.helpers import ROOT, SAMPLE, Credentials, make_user, sign_in, submit, wait_for


def test_pages_need_a_signed_in_user_and_only_a_few_things_are_open(app):
    anonymous = app.test_client()
    for path in ("/runs", "/runs/new", "/datasets", "/workers", "/settings/tokens", "/"):
        response = anonymous.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"], path
    assert anonymous.get("/login").status_code == 200
    poll = anonymous.get("/runs/rows?ids=", headers={"HX-Request": "true", "Referer": "http://localhost/runs"})
    assert poll.status_code == 401 and poll.headers["HX-Redirect"] == "/login?next=/runs", "a poll is sent to sign in"
    assert anonymous.get("/api/health").status_code == 200
    assert anonymous.get("/static/css/app.css").status_code == 200


def test_the_api_needs_a_bearer_token_and_never_takes_the_session_alone(app, client, credentials):
    anonymous = app.test_client()
    for method, path in (("get", "/api/tunix/runs"), ("post", "/api/tunix/run?mode=async"),
                         ("get", "/api/datasets"), ("get", "/api/workers")):
        response = getattr(anonymous, method)(path, json={"dataset_key": SAMPLE})
        assert response.status_code == 401, path
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert set(response.get_json()) == {"error", "details"} and "Authorization" in response.get_json()["details"]
    bad = anonymous.get("/api/tunix/runs", headers={"Authorization": "Bearer trt_not-a-token"})
    assert bad.status_code == 401
    session_only = app.test_client()
    sign_in(session_only, credentials)
    del session_only.environ_base["HTTP_AUTHORIZATION"]
    assert session_only.get("/runs").status_code == 200, "the session works for pages"
    assert session_only.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).status_code == 401
    assert db.session.scalar(select(func.count()).select_from(TunixRun)) == 0


def test_a_cross_site_text_plain_request_queues_nothing(app, client, credentials):
    cross_site = {"Content-Type": "text/plain", "Origin": "https://evil.example"}
    body = '{"dataset_key": "%s"}' % SAMPLE
    assert app.test_client().post("/api/tunix/run?mode=async", data=body, headers=cross_site).status_code == 401
    # Even a script that somehow held a token cannot send the body as anything but JSON.
    response = client.post("/api/tunix/run?mode=async", data=body, headers=cross_site)
    assert response.status_code == 415 and "Content-Type" in response.get_json()["details"]
    assert db.session.scalar(select(func.count()).select_from(TunixRun)) == 0


def test_tokens_are_stored_as_hashes_shown_once_and_revocable(client, credentials):
    row = db.session.scalar(select(ApiToken))
    assert row.token_hash == hashlib.sha256(credentials.token.encode()).hexdigest()
    assert credentials.token not in str(db.session.execute(text("SELECT * FROM api_tokens")).all())
    assert client.get("/api/tunix/runs").status_code == 200
    db.session.refresh(row)
    first_use = row.last_used_at
    assert first_use is not None
    client.get("/api/tunix/runs")
    db.session.refresh(row)
    assert row.last_used_at == first_use, "no write on every request"
    created = client.post("/settings/tokens", data={"label": "nightly sweep"})
    page = created.get_data(as_text=True)
    assert created.status_code == 201 and "shown this once" in page and "nightly sweep" in page
    secret = re.search(r'id="new-token"[^>]*>([^<]+)<', page)[1]
    assert created.headers["Cache-Control"] == "no-store"  # no cache may keep the page that shows it
    assert f'Bearer {secret}' in page  # a curl example to try it with
    assert client.get("/api/tunix/runs", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert secret not in client.get("/settings/tokens").get_data(as_text=True)
    token_id = db.session.scalar(select(ApiToken.id).where(ApiToken.label == "nightly sweep"))
    assert client.post(f"/settings/tokens/{token_id}/revoke").status_code == 303
    assert client.get("/api/tunix/runs", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_owners_and_admins_may_cancel_and_retry_others_may_only_read(app, client):
    run_id = submit(client)["run_id"]
    other = sign_in(app.test_client(), make_user("someone-else"))
    admin = sign_in(app.test_client(), make_user("boss", admin=True))
    assert other.get(f"/api/tunix/runs/{run_id}").get_json()["created_by"] == "tester"
    assert "tester" in other.get(f"/runs/{run_id}").get_data(as_text=True)
    refused = other.post(f"/api/tunix/runs/{run_id}/cancel")
    assert refused.status_code == 403 and "owner or an admin" in refused.get_json()["error"]
    assert other.post(f"/runs/{run_id}/cancel").status_code == 403
    assert admin.post(f"/api/tunix/runs/{run_id}/cancel").status_code == 200
    assert other.post(f"/api/tunix/runs/{run_id}/retry").status_code == 403
    retried = client.post(f"/api/tunix/runs/{run_id}/retry")
    assert retried.status_code == 202
    assert client.get(f"/api/tunix/runs/{retried.get_json()['run_id']}").get_json()["created_by"] == "tester"
    submit(other)
    mine = client.get("/api/tunix/runs?user=tester").get_json()["runs"]
    assert len(mine) == 2 and {r["created_by"] for r in mine} == {"tester"}
    assert client.get("/runs?user=someone-else").get_data(as_text=True).count('id="run-row-') == 1


def test_datasets_record_who_uploaded_them(client):
    created = client.post("/api/datasets", json={"name": "mine", "examples": [{"prompt": "p", "response": "r"}]})
    assert created.status_code == 201 and created.get_json()["created_by"] == "tester"
    assert client.get(f"/api/datasets/{SAMPLE}").get_json()["created_by"] is None  # made by the system


def test_sign_in_is_paused_after_too_many_failures(app, credentials):
    app.config.update(SIGNIN_MAX_FAILURES=3)
    guesser = app.test_client()
    for _ in range(3):
        wrong = guesser.post("/login", data={"username": "tester", "password": "guess-guess"})
        assert wrong.status_code == 422 and "wrong username or password" in wrong.get_data(as_text=True)
    paused = guesser.post("/login", data={"username": "tester", "password": credentials.password})
    assert paused.status_code == 429, "from the guessing address even the right password waits"
    assert re.search(r"try again in \d+ s", paused.get_data(as_text=True)), "the pause is said in seconds"
    # Another name from that address is not paused yet: an address is paused only past 3 x 3 failures.
    assert guesser.post("/login", data={"username": "nobody", "password": "x" * 12}).status_code == 422
    for n in range(5):
        assert guesser.post("/login", data={"username": f"name{n}", "password": "x" * 12}).status_code == 422
    assert guesser.post("/login", data={"username": "someone", "password": "x" * 12}).status_code == 429


def test_a_stranger_failing_for_a_name_from_many_addresses_never_locks_its_owner_out(app, credentials):
    """The audit's lock-out: ten failures for a name from ten addresses made the owner's right password 429."""
    app.config.update(SIGNIN_MAX_FAILURES=10)
    for n in range(30):
        stranger = app.test_client()
        stranger.environ_base["REMOTE_ADDR"] = f"198.51.100.{n + 1}"
        code = stranger.post("/login", data={"username": "tester", "password": f"guess {n:04d}"}).status_code
        assert code in (422, 429)
    # The strangers are slowed: one more try from one of their addresses waits.
    slowed = app.test_client()
    slowed.environ_base["REMOTE_ADDR"] = "198.51.100.30"
    assert slowed.post("/login", data={"username": "tester", "password": "guess again"}).status_code == 429
    owner = app.test_client()
    owner.environ_base["REMOTE_ADDR"] = "192.0.2.10"
    assert owner.post("/login", data={"username": "tester", "password": credentials.password}).status_code == 303


def test_forwarded_addresses_are_believed_only_from_a_named_proxy(app, credentials):
    """Behind gunicorn alone, X-Forwarded-For is a client's word: it cannot buy fresh addresses to guess from."""
    app.config.update(SIGNIN_MAX_FAILURES=2)
    local = app.test_client()
    for n in range(3):
        local.post("/login", data={"username": "tester", "password": "wrong wrong"},
                   headers={"X-Forwarded-For": f"203.0.113.{n}"})
    assert local.post("/login", data={"username": "tester", "password": credentials.password},
                      headers={"X-Forwarded-For": "203.0.113.99"}).status_code == 429


def test_sign_in_redirects_only_within_the_site(app, credentials):
    for target, expected in (("/datasets", "/datasets"), ("//evil.example/x", "/runs"),
                             ("https://evil.example/", "/runs")):
        browser = app.test_client()
        response = browser.post("/login", data={"username": credentials.username,
                                                "password": credentials.password, "next": target})
        assert response.status_code == 303 and response.headers["Location"] == expected, target


def _flask(*args: str, database_url: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["DATABASE_URL"] = database_url
    return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_the_cli_creates_users_and_tokens_that_work(app, database_url):
    created = _flask("users", "create", "cli-user", database_url=database_url)
    assert created.returncode == 0, created.stderr
    password = created.stdout.strip()
    assert len(password) >= 10 and "\n" not in password
    client = app.test_client()
    assert client.post("/login", data={"username": "cli-user", "password": password}).status_code == 303
    changed = _flask("users", "set-password", "cli-user", database_url=database_url, stdin="a new password 1\n")
    assert changed.returncode == 0, changed.stderr
    db.session.expire_all()  # the test shares one session across requests; a server's requests do not
    assert app.test_client().post("/login", data={"username": "cli-user",
                                                  "password": "a new password 1"}).status_code == 303
    token = _flask("tokens", "create", "cli-user", "--label", "ci", database_url=database_url)
    assert token.returncode == 0 and token.stdout.strip().startswith("trt_")
    response = client.get("/api/tunix/runs", headers={"Authorization": f"Bearer {token.stdout.strip()}"})
    assert response.status_code == 200
    assert _flask("users", "create", "cli-user", database_url=database_url).returncode != 0
    assert _flask("tokens", "create", "nobody", database_url=database_url).returncode != 0


def test_every_response_carries_the_security_headers_and_safe_cookies(app, client, credentials):
    for response in (client.get("/runs"), client.get("/api/tunix/runs"), app.test_client().get("/login")):
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
    plain = app.test_client().post("/login", data={"username": credentials.username,
                                                   "password": credentials.password})
    cookie = plain.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    spoofed = app.test_client().post("/login", data={"username": credentials.username,
                                                     "password": credentials.password},
                                     headers={"X-Forwarded-Proto": "https"})
    assert "Secure" not in spoofed.headers["Set-Cookie"], "no proxy is named: the header is a client's word"
    app.config["TRUSTED_PROXIES"] = ["127.0.0.1"]  # nginx on this host, in front
    over_tls = app.test_client().post("/login", data={"username": credentials.username,
                                                      "password": credentials.password},
                                      headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in over_tls.headers["Set-Cookie"]
    assert over_tls.headers["Location"] == "/runs"


def _signed_in_browser(app, credentials):
    browser = sign_in(app.test_client(), credentials)
    browser.environ_base.pop("HTTP_AUTHORIZATION")  # a browser: its cookie alone
    return browser


def _replayed(app, cookie: str, address: str = "203.0.113.9"):
    """Another machine that holds a copy of the cookie."""
    thief = app.test_client()
    thief.environ_base["REMOTE_ADDR"] = address
    thief.set_cookie("session", cookie)
    return thief


def _works(client) -> bool:
    return client.get("/settings/tokens").status_code == 200


@pytest.mark.parametrize("how", ["sign-out", "new password", "sign out everywhere", "deactivation"])
def test_a_saved_cookie_is_dead_once_its_session_is_ended(app, credentials, database_url, how):
    browser = _signed_in_browser(app, credentials)
    saved = browser.get_cookie("session").value
    assert _works(_replayed(app, saved)), "a copy works while the session lives (that is what a cookie is)"
    if how == "sign-out":
        assert browser.post("/logout").status_code == 303
    elif how == "new password":
        assert _flask("users", "set-password", "tester", database_url=database_url,
                      stdin="another password 2\n").returncode == 0
    elif how == "sign out everywhere":
        assert _flask("users", "sign-out", "tester", database_url=database_url).returncode == 0
    else:
        assert _flask("users", "deactivate", "tester", database_url=database_url).returncode == 0
    thief = _replayed(app, saved)
    wait_for(lambda: not _works(_replayed(app, saved)))  # another process's change: heard through the feed
    assert thief.get("/settings/tokens").status_code == 302
    assert thief.post("/settings/tokens", data={"label": "stolen"}).status_code == 302
    assert db.session.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.label == "stolen")) == 0
    assert not _works(browser)
    if how == "deactivation":
        # Its tokens stop too, and so does signing in, until an admin makes it active again.
        assert app.test_client().get("/api/tunix/runs", headers={
            "Authorization": f"Bearer {credentials.token}"}).status_code == 401
        assert app.test_client().post("/login", data={"username": "tester", "password": credentials.password}
                                      ).status_code == 422
        assert _flask("users", "activate", "tester", database_url=database_url).returncode == 0
        wait_for(lambda: _works(_signed_in_browser(app, credentials)))
    else:
        assert _works(_signed_in_browser(app, credentials if how != "new password" else
                                         Credentials("tester", "another password 2", credentials.token)))


def test_sign_in_starts_a_fresh_session_with_a_new_csrf_secret(app, credentials):
    browser = app.test_client()
    page = browser.get("/login").get_data(as_text=True)
    before = re.search(r'name="csrf_token" value="([^"]+)"', page)[1]
    with browser.session_transaction() as stored:
        secret_before = stored.get("csrf_token")
    assert browser.post("/login", data={"username": credentials.username, "password": credentials.password,
                                        "csrf_token": before}).status_code == 303
    with browser.session_transaction() as stored:
        assert stored.get("csrf_token") != secret_before and "signed_in_at" in stored


def test_a_session_ends_after_its_idle_and_its_absolute_lifetime(app, credentials):
    browser = _signed_in_browser(app, credentials)
    assert _works(browser)
    with browser.session_transaction() as stored:
        stored["seen_at"] -= app.config["SESSION_IDLE_SECONDS"] + 1
    assert not _works(browser), "idle too long"
    browser = _signed_in_browser(app, credentials)
    with browser.session_transaction() as stored:
        stored["signed_in_at"] -= app.config["SESSION_MAX_SECONDS"] + 1  # and seen a moment ago
    assert not _works(browser), "past the absolute lifetime, however busy"
