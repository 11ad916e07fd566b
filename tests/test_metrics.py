"""/metrics: the required families, with values that move, and names promtool accepts."""
import re
import shutil
import socket
import subprocess
import urllib.request

import pytest

from tests.helpers import SAMPLE, wait_for


def sample(text: str, name: str, **labels) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^(\w+)\{([^}]*)\} (\S+)$", line)
        if match and match[1] == name:
            got = ",".join(sorted(match[2].split(",")))
            if got == wanted:
                return float(match[3])
    return 0.0


def test_metrics_move_with_runs(client):
    before = client.get("/metrics").get_data(as_text=True)
    client.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE})
    client.post("/api/tunix/run?mode=dry_run", json={"dataset_key": SAMPLE})
    client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE})
    response = client.get("/metrics")
    assert response.status_code == 200 and response.content_type.startswith("text/plain")
    after = response.get_data(as_text=True)
    assert "# TYPE tunix_runs gauge" in after
    assert "# TYPE tunix_run_duration_seconds histogram" in after
    assert "# TYPE tunix_db_write_latency_seconds histogram" in after
    assert sample(after, "tunix_runs", status="completed", mode="sync") == 1
    assert sample(after, "tunix_runs", status="completed", mode="dry_run") == 1
    assert sample(after, "tunix_runs", status="pending", mode="async") == 1
    for name, labels in [("tunix_run_duration_seconds_count", {"mode": "sync", "status": "completed"}),
                         ("tunix_run_duration_seconds_count", {"mode": "dry_run", "status": "completed"}),
                         ("tunix_db_write_latency_seconds_count", {"operation": "create_run"}),
                         ("tunix_db_write_latency_seconds_count", {"operation": "finish"}),
                         ("tunix_db_write_latency_seconds_count", {"operation": "record_progress"})]:
        assert sample(after, name, **labels) > sample(before, name, **labels), (name, labels)
    assert "flask_http_request_total" in after


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (make test installs "
                                                             "Debian's prometheus when run as root)")


def promtool_problems(exposition: str) -> str:
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=exposition, capture_output=True, text=True)
    return "" if checked.returncode == 0 and not checked.stdout.strip() else checked.stdout + checked.stderr


@needs_promtool
def test_the_web_metrics_pass_promtool(client):
    client.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE})
    client.get("/no/such/page")
    assert promtool_problems(client.get("/metrics").get_data(as_text=True)) == ""


@needs_promtool
def test_the_worker_metrics_pass_promtool_and_listen_on_loopback(client, worker_env, start_worker):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE})
    worker = start_worker(worker_env(TUNIX_WORKER_METRICS_PORT=str(port)), "--exit-when-idle")
    exposition = wait_for(lambda: _scrape(port))
    assert promtool_problems(exposition) == ""
    assert _listening_addresses(port) == {"127.0.0.1"}
    worker.wait(timeout=60)


def _listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses something listens on at this port, from /proc/net/tcp."""
    found = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, local_port = local.split(":")
            if state == "0A" and int(local_port, 16) == port:
                found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def _scrape(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def test_unmatched_routes_share_one_label_and_made_up_methods_never_reach_the_metrics(app, client):
    for path in ("/no/such/page", "/another/missing/one"):
        assert client.get(path).status_code in (302, 404)
    for method in ("FOO", "BREW", "X" * 40):
        response = client.open("/runs", method=method)
        assert response.status_code == 405
    text_ = client.get("/metrics").get_data(as_text=True)
    assert 'url_rule="None"' not in text_ and "FOO" not in text_ and "BREW" not in text_
    assert 'le="3600.0"' in text_, "request durations reach past the run timeout"
