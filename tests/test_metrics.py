"""/metrics: the three required families, with values that move."""
import re

from tests.helpers import SAMPLE


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
    assert "# TYPE tunix_runs_total gauge" in after
    assert "# TYPE tunix_run_duration_seconds histogram" in after
    assert "# TYPE tunix_db_write_latency_seconds histogram" in after
    assert sample(after, "tunix_runs_total", status="completed", mode="sync") == 1
    assert sample(after, "tunix_runs_total", status="completed", mode="dry_run") == 1
    assert sample(after, "tunix_runs_total", status="pending", mode="async") == 1
    for name, labels in [("tunix_run_duration_seconds_count", {"mode": "sync", "status": "completed"}),
                         ("tunix_run_duration_seconds_count", {"mode": "dry_run", "status": "completed"}),
                         ("tunix_db_write_latency_seconds_count", {"operation": "create_run"}),
                         ("tunix_db_write_latency_seconds_count", {"operation": "transition"}),
                         ("tunix_db_write_latency_seconds_count", {"operation": "record_progress"})]:
        assert sample(after, name, **labels) > sample(before, name, **labels), (name, labels)
    assert "flask_http_request_total" in after
