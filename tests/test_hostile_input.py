"""Hostile input is answered with a 4xx that names the problem: never a 500, a traceback, SQL or a path."""
import io
import json
import os
import shutil
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.extensions import db
from app.models import Dataset, TunixRun
from tests.helpers import SAMPLE, fake_trainer_command, submit

LEAKS = ("Traceback", "psycopg2", "sqlalchemy", "SELECT ", "/work/", "/root/", "site-packages")
ENDPOINTS_GET = ["/runs", "/runs/new", "/datasets", "/workers", "/api/tunix/runs", "/api/datasets", "/api/workers",
                 "/runs/{run}", "/runs/{run}/status", "/api/tunix/runs/{run}", "/api/tunix/runs/{run}/metrics",
                 "/api/tunix/runs/{run}/logs", "/datasets/" + SAMPLE, "/api/datasets/" + SAMPLE]


def assert_clean(response, what) -> None:
    assert response.status_code < 500, (what, response.status_code, response.get_data(as_text=True)[:300])
    body = response.get_data(as_text=True)
    for leak in LEAKS:
        assert leak not in body, (what, leak)


NUL_AND_SURROGATES = ["a\x00b", "\x00", "\ud800", "x\udfffy"]


@pytest.mark.parametrize("bad", NUL_AND_SURROGATES)
def test_nul_bytes_and_lone_surrogates_are_refused_everywhere_they_could_enter(client, bad):
    before = (db.session.query(TunixRun).count(), db.session.query(Dataset).count())
    json_bodies = [
        ("/api/tunix/run?mode=async", {"dataset_key": bad}), ("/api/tunix/run?mode=async", {"dataset_key": SAMPLE, "name": bad}),
        ("/api/tunix/run?mode=dry_run", {"dataset_key": SAMPLE, "model_id": bad}),
        ("/api/tunix/run?mode=async", {"dataset_key": SAMPLE, "tags": [bad]}),
        ("/api/datasets", {"name": "ok", "examples": [{"prompt": bad, "response": "r"}]}),
        ("/api/datasets", {"name": "ok", "description": bad, "examples": [{"prompt": "p", "response": "r"}]}),
        ("/api/datasets", {"name": "ok", "jsonl": json.dumps({"prompt": bad, "response": "r"})}),
    ]
    for path, body in json_bodies:
        response = client.post(path, data=json.dumps(body), content_type="application/json")
        assert response.status_code in (400, 422), (path, body, response.status_code)
        assert_clean(response, (path, body))
    # In a URL the same characters arrive percent-encoded (a surrogate as the bytes UTF-8 would give it).
    raw = "".join(f"%{b:02X}" for b in bad.encode("utf-8", "surrogatepass"))
    for path in (f"/datasets/{raw}", f"/api/datasets/{raw}", f"/runs?dataset_key={raw}", f"/runs?tag={raw}",
                 f"/api/tunix/runs?dataset_key={raw}", f"/runs/{raw}", f"/api/tunix/runs/{raw}/logs",
                 f"/runs?user={raw}"):
        assert_clean(client.get(path), path)
    upload = client.post("/api/datasets", data={"name": "up", "file": (
        io.BytesIO(b'{"prompt": "a\\u0000b", "response": "r"}\n'), "x.jsonl")})
    assert upload.status_code == 422 and "line 1" in upload.get_json()["details"]["file"]
    assert (db.session.query(TunixRun).count(), db.session.query(Dataset).count()) == before


def test_deep_json_long_paths_and_huge_numbers_get_4xx(client):
    run_id = submit(client)["run_id"]
    deep = "[" * 100_000 + "]" * 100_000
    for path in ("/api/tunix/run?mode=async", "/api/datasets"):
        response = client.post(path, data=deep, content_type="application/json")
        assert response.status_code == 400, path
        assert_clean(response, path)
    deep_line = client.post("/api/datasets", json={"name": "deep", "jsonl": "[" * 100_000})
    assert deep_line.status_code == 422
    for path in (f"/runs/{run_id}/artifacts/{'a' * 300}", f"/runs/{run_id}/artifacts/a%00b",
                 f"/runs/{run_id}/archive/{'b' * 300}.zip", f"/api/tunix/runs/{run_id}/metrics?max_points=1{'0' * 400}"):
        response = client.get(path)
        assert response.status_code in (400, 404, 422), path
        assert_clean(response, path)
    long_model = client.post("/api/tunix/run?mode=dry_run", json={"dataset_key": SAMPLE, "model_id": "/" + "m" * 300})
    assert long_model.status_code == 422


def test_model_ids_outside_the_allowed_roots_reveal_nothing(client, app, tmp_path, artifacts_root):
    answers = set()
    for model_id in ("/etc", "/nonexistent/at/all", "/root", "/proc/self", str(artifacts_root / ".." / "..")):
        response = client.post("/api/tunix/run?mode=dry_run", json={"dataset_key": SAMPLE, "model_id": model_id})
        assert response.status_code == 422
        answers.add(response.get_json()["details"]["model_id"])
    assert len(answers) == 1 and "TUNIX_MODEL_ROOTS" in answers.pop()
    escape = artifacts_root / "escape"
    os.symlink("/etc", escape)
    response = client.post("/api/tunix/run?mode=dry_run", json={"dataset_key": SAMPLE, "model_id": str(escape)})
    assert "TUNIX_MODEL_ROOTS" in response.get_json()["details"]["model_id"], "a link out of a root is outside it"
    inside = artifacts_root / "not-a-checkpoint"
    inside.mkdir()
    response = client.post("/api/tunix/run?mode=dry_run", json={"dataset_key": SAMPLE, "model_id": str(inside)})
    assert "config.json" in response.get_json()["details"]["model_id"], "inside a root the details help"


def test_artifact_and_log_downloads_never_leave_the_run_directory(client, app, artifacts_root):
    run_id = submit(client, "sync")["run_id"]
    run_dir = artifacts_root / run_id
    os.symlink("/etc/passwd", run_dir / "passwd-link")
    os.symlink("/etc", run_dir / "etc-link")
    for path in ("../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "..%2f..%2fetc%2fpasswd", "/etc/passwd",
                 "passwd-link", "etc-link/passwd", "%00", "run_config.json%00.txt"):
        response = client.get(f"/runs/{run_id}/artifacts/{path}", follow_redirects=True)
        assert response.status_code in (400, 404), path
        assert "root:" not in response.get_data(as_text=True)
    for folder in ("etc-link", "..", "../..", "/etc"):
        assert client.get(f"/runs/{run_id}/archive/{folder}.zip", follow_redirects=True).status_code in (400, 404), folder
    # A run stored before manifests existed is listed as its folder's files: links out of it are not among them.
    shutil.rmtree(run_dir / ".manifests")
    assert client.get(f"/runs/{run_id}/artifacts/run_config.json").status_code == 200
    for path in ("passwd-link", "etc-link/passwd"):
        assert client.get(f"/runs/{run_id}/artifacts/{path}").status_code == 404, path
    assert "passwd" not in client.get(f"/runs/{run_id}").get_data(as_text=True)
    other = uuid.uuid4()
    assert client.get(f"/runs/{other}/log.txt").status_code == 404


PAYLOADS = ['<script>alert(1)</script>', '"onmouseover="alert(1)', "javascript:alert(1)", "</pre><b>x</b>"]


def test_script_payloads_are_shown_as_text_on_every_page(client, app):
    for i, payload in enumerate(PAYLOADS):
        client.post("/api/datasets", json={"name": f"x{i}", "description": payload,
                                           "examples": [{"prompt": payload, "response": payload}]})
        app.config.update(TRAIN_COMMAND=["/bin/sh", "-c", f"printf '%s\\n' '{payload}'; exit 3", "trainer"])
        run_id = submit(client, "sync", name=payload, dataset_key=f"x{i}-v1", batch_size=1)["run_id"]
        client.post("/settings/tokens", data={"label": payload})
        for path in (f"/runs/{run_id}", f"/runs/{run_id}/status?seen=running", "/runs", f"/datasets/x{i}-v1",
                     "/datasets", "/settings/tokens", f"/runs/{run_id}/cancel"):
            page = client.get(path).get_data(as_text=True)
            if any(c in payload for c in '<>"'):
                assert payload not in page, (payload, path)  # escaped wherever it is shown
            assert "<script>alert" not in page and '"onmouseover="' not in page
            assert 'href="javascript:' not in page and 'src="javascript:' not in page, (payload, path)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children,
                                                                                              max_size=4), max_leaves=12)
RUN_FIELDS = ["dataset_key", "model_id", "name", "tags", "learning_rate", "batch_size", "max_steps", "num_epochs",
              "finetune", "eval_fraction", "seed", "max_attempts"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(json_values, st.dictionaries(st.sampled_from(RUN_FIELDS), json_values, max_size=6)),
       mode=st.sampled_from(["async", "dry_run", "bogus", ""]))
def test_random_run_submissions_never_fail_the_server(client, body, mode):
    response = client.post(f"/api/tunix/run?mode={mode}", data=json.dumps(body), content_type="application/json")
    assert_clean(response, body)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), content_type=st.sampled_from(["application/json", "text/plain",
                                                                     "application/x-www-form-urlencoded", ""]),
       path=st.sampled_from(["/api/tunix/run?mode=async", "/api/datasets", "/runs/new", "/datasets", "/login"]))
def test_random_bytes_at_every_post_never_fail_the_server(client, data, content_type, path):
    assert_clean(client.post(path, data=data, content_type=content_type), (path, data))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=st.dictionaries(st.sampled_from(["status", "mode", "dataset_key", "tag", "user", "cursor", "limit",
                                              "after", "max_points", "log_after", "seen", "ids", "clone", "next"]),
                             st.text(max_size=40), max_size=4),
       path=st.sampled_from(ENDPOINTS_GET), signed_in=st.booleans())
def test_random_query_strings_signed_in_or_not_never_fail_the_server(client, app, query, path, signed_in):
    run_id = db.session.query(TunixRun.id).limit(1).scalar() or uuid.uuid4()
    target = app.test_client() if not signed_in else client
    response = target.get(path.format(run=run_id), query_string=query)
    assert_clean(response, (path, query))


header_text = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=st.dictionaries(st.sampled_from(["Authorization", "Idempotency-Key", "Content-Type", "Cookie",
                                                "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host",
                                                "X-Forwarded-Prefix", "Accept", "Referer", "Origin"]),
                               header_text, max_size=4),
       path=st.sampled_from(["/api/tunix/run?mode=async", "/api/datasets", "/runs/new", "/login"]),
       signed_in=st.booleans())
def test_random_headers_never_fail_the_server(client, app, headers, path, signed_in):
    target = client if signed_in else app.test_client()
    headers = {k: v.encode("latin-1", "replace").decode("latin-1") for k, v in headers.items()}
    response = target.post(path, data=json.dumps({"dataset_key": SAMPLE}), headers=headers,
                           content_type=headers.get("Content-Type", "application/json"))
    assert_clean(response, (path, headers))


def test_an_archive_is_named_after_its_folder_never_after_the_path_sent(client, app):
    app.config["TRAIN_COMMAND"] = fake_trainer_command("--artifacts")
    run_id = submit(client, "sync")["run_id"]
    expected = f'attachment; filename="run-{run_id[:8]}-model.zip"'
    for hostile in ("model/x%22%3B%20filename%2A%3DUTF-8%27%27evil.html%3B%20a%3D%22/..",
                    "model/%E2%80%AE/..", "model/a%0d%0aSet-Cookie:%20b=c/..", "checkpoints/../model"):
        response = client.get(f"/runs/{run_id}/archive/{hostile}.zip")
        assert response.status_code in (200, 404), hostile
        assert "Set-Cookie" not in response.headers and "evil" not in str(response.headers)
        if hostile.startswith("model/x") or hostile.startswith("checkpoints/.."):
            assert response.status_code == 200, hostile  # the audit's path: served, under the folder's name
        if response.status_code == 200:
            assert response.headers["Content-Disposition"] == expected, hostile
        response.close()
    step = client.get(f"/runs/{run_id}/archive/checkpoints/3.zip")
    assert step.headers["Content-Disposition"] == f'attachment; filename="run-{run_id[:8]}-checkpoints-3.zip"'
    step.close()


def test_numbers_and_times_a_client_sends_are_bounded_before_they_reach_sql(client):
    import base64

    huge = "99999999999999999999"
    run_id = submit(client)["run_id"]
    for path in (f"/api/datasets/{SAMPLE}/leaderboard?offset={huge}", f"/api/sweeps?offset={huge}",
                 f"/api/tunix/runs/{run_id}/evaluation?offset={huge}", f"/api/tunix/runs/{run_id}/logs?after={huge}",
                 f"/api/sweeps?offset=2147483648", f"/api/tunix/runs/{run_id}/evaluation?offset=-1",
                 f"/api/tunix/runs/{run_id}/evaluation?offset={'9' * 5000}"):
        response = client.get(path)
        assert response.status_code == 422, path
        assert response.get_json()["details"], path
    assert client.get(f"/datasets/{SAMPLE}/leaderboard?offset={huge}").status_code == 200
    assert client.get(f"/runs/{run_id}/status?log_after={huge}").status_code == 200
    assert client.get(f"/api/datasets/{SAMPLE}/leaderboard?offset=2147483647").status_code == 200
    # A cursor whose time carries an offset Python takes and Postgres does not (±23:59).
    for offset in ("+23:59", "-23:59"):
        raw = f"2026-06-01T12:00:00{offset}|{run_id}".encode()
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        assert client.get(f"/api/tunix/runs?cursor={cursor}").status_code == 200, offset
        assert client.get(f"/runs?cursor={cursor}").status_code == 200, offset
    naive = base64.urlsafe_b64encode(f"2026-06-01T12:00:00|{run_id}".encode()).decode().rstrip("=")
    assert client.get(f"/api/tunix/runs?cursor={naive}").status_code == 422


def test_a_checkpoint_is_stored_as_the_path_that_was_checked(client, artifacts_root):
    from tests.checkpoints import write_tiny_checkpoint

    checkpoint = write_tiny_checkpoint(artifacts_root / "models" / "qwen-small", "qwen3")
    os.symlink(checkpoint, artifacts_root / "current")
    for given in (artifacts_root / "current", artifacts_root / "models" / ".." / "models" / "qwen-small",
                  f"/proc/self/root{checkpoint}"):
        run = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE, "model_id": str(given)})
        assert run.status_code == 202, run.get_json()
        stored = client.get(f"/api/tunix/runs/{run.get_json()['run_id']}").get_json()["config"]["model_id"]
        assert stored == str(checkpoint.resolve()), given


def test_a_huge_value_is_not_echoed_back_whole(client, app):
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024
    huge = "k" * (30 * 1024 * 1024)
    for body in ({"dataset_key": huge}, {"dataset_key": SAMPLE, "learning_rate": huge},
                 {"dataset_key": SAMPLE, huge[:1_000_000]: 1}):
        response = client.post("/api/tunix/run?mode=async", json=body)
        assert response.status_code == 422
        assert len(response.data) < 4096, len(response.data)
        assert "kkkk" in json.dumps(response.get_json()["details"])  # still says which value it was
    form = client.post("/runs/new", data={"dataset_key": SAMPLE, "mode": "async", "learning_rate": huge[:100_000]})
    assert form.status_code == 422
    page = form.get_data(as_text=True)
    # Kept whole in its field, to correct; quoted cut short in the messages.
    assert page.count("k" * 100_000) == 1 and len(page) < 100_000 + 30_000
