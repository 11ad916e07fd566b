"""What many tests do: submit runs through the API, read them back, wait for a condition, inspect processes."""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE_TRAINER = ROOT / "tests" / "fake_trainer.py"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; make test installs it when run as root
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]
SAMPLE = "arithmetic-v1"  # the sample dataset every test app starts with


def fake_trainer_command(*args: str) -> list[str]:
    """TRAIN_COMMAND for the stand-in trainer with the given options."""
    return [sys.executable, str(FAKE_TRAINER), *args]


@dataclass
class Credentials:
    username: str
    password: str
    token: str


def make_user(username: str = "tester", *, admin: bool = False) -> Credentials:
    """A user and an API token, made by the same account code the CLI and the pages use (needs an app context)."""
    from app.accounts import service as accounts

    user, password = accounts.create_user(username, admin=admin)
    _, token = accounts.create_token(user, "tests")
    return Credentials(username, password, token)


def sign_in(client, credentials: Credentials):
    """Sign the test client in through /login, as a person does, and send the token on every API call."""
    form = client.get("/login").get_data(as_text=True)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form)
    response = client.post("/login", data={"username": credentials.username, "password": credentials.password,
                                           **({"csrf_token": csrf[1]} if csrf else {})})
    assert response.status_code == 303, response.get_data(as_text=True)
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {credentials.token}"
    return client


def sign_in_browser(page, base_url: str, credentials: Credentials) -> None:
    """Sign a browser page in through the sign-in form."""
    page.goto(f"{base_url}/login")
    page.fill("#username", credentials.username)
    page.fill("#password", credentials.password)
    page.click("button[type=submit] >> text=Sign in")
    page.wait_for_url(lambda url: "/login" not in url)


def post_run(client, mode: str | None = None, **body):
    """POST /api/tunix/run on the sample dataset; the response."""
    path = "/api/tunix/run" + (f"?mode={mode}" if mode else "")
    return client.post(path, json={"dataset_key": SAMPLE, **body})


def submit(client, mode: str = "async", **body) -> dict:
    """Submit a run on the sample dataset (async unless told); the response's JSON."""
    return post_run(client, mode, **body).get_json()


def run_json(client, run_id: str) -> dict:
    return client.get(f"/api/tunix/runs/{run_id}").get_json()


def run_status(client, run_id: str) -> str:
    return client.get(f"/api/tunix/runs/{run_id}/status").get_json()["status"]


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1):
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout` seconds.

    Once it holds, this process's change feeds have heard every commit made so far (app.change_feed):
    what another process wrote before the condition held is then seen by pages served here too."""
    from app import change_feed

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            change_feed.sync_started()
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def processes_mentioning(fragment: str) -> list[int]:
    """Live processes whose command line contains `fragment` (e.g. a run directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if fragment.encode() in f.read() and alive(int(entry)):
                        found.append(int(entry))
            except OSError:
                pass
    return found


needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (make test "
                                                                  "installs it when run as root)")


def scratch_file(scratch_root, run_id: str, name: str):
    """A file of the run's scratch folder (the execution under way), or None while there is none."""
    return next(iter(sorted(Path(scratch_root).glob(f"{run_id}.*/{name}"))), None)
