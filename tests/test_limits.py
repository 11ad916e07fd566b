"""Limits that keep one request or one user from taking the service, and uploads read as written."""
import io
import json

import pytest

from app.datasets.parsing import parse_jsonl
from tests.helpers import SAMPLE, submit


def test_sync_mode_takes_only_runs_that_fit_its_time(client, app):
    app.config["SYNC_MAX_SECONDS"] = 30  # the sample's 162 tiny steps: about 20 s by tiny's nominal figures
    assert submit(client, "sync")["status"] == "completed"
    too_long = client.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE, "num_epochs": 50})
    assert too_long.status_code == 422
    message = too_long.get_json()["details"]["mode"]
    # The figure says how it was made: the parts, and that they are nominal (the stand-in trainer
    # reports no training pace, so no completed run measured tiny).
    assert "2700 steps at 0.07 s each" in message and "nominal figures for tiny" in message
    assert "scoring 24 answers of up to 64 tokens" in message and "Queue it instead (async)" in message
    assert client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE, "num_epochs": 50}).status_code == 202
    form = client.post("/runs/new", data={"dataset_key": SAMPLE, "num_epochs": "50", "mode": "sync"})
    # The form says it in its own words: the mode as the form offers it, not the API's value.
    assert form.status_code == 422 and "Queue it instead (choose “queue it for a worker”)" in form.get_data(as_text=True)


def test_the_sync_estimate_uses_the_pace_completed_runs_of_the_model_kept(client, app):
    from app.extensions import db
    from app.models import TunixRun
    from app.runs import estimates

    config = {"dataset_key": SAMPLE, "model_id": "tiny", "eval_fraction": 0.1, "num_epochs": 3, "batch_size": 4,
              "max_steps": None, "eval_max_examples": 200, "eval_max_new_tokens": 64, "eval_dataset_key": None}
    nominal = estimates.estimate(config)
    assert nominal.measured_runs == 0 and nominal.steps == 162 and nominal.scored_examples == 24
    # A completed run of 18 steps at 60 steps/s that took 24.8 s, 0.4 s of them scoring 2 x 24 answers.
    for _ in range(3):
        run_id = submit(client)["run_id"]
        db.session.query(TunixRun).filter_by(id=run_id).update({
            "status": "completed", "duration_seconds": 24.8, "result": {
                "steps": 18, "steps_per_second": 60.0,
                "evaluation": {"before": {"examples": 24, "seconds": 0.3}, "after": {"examples": 24, "seconds": 0.1}}}})
    db.session.commit()
    measured = estimates.estimate(config)
    assert measured.measured_runs == 3
    assert measured.step_seconds == pytest.approx(1 / 60)
    assert measured.overhead_seconds == pytest.approx(24.8 - 18 / 60 - 0.4)
    assert measured.token_seconds == pytest.approx(0.4 / (48 * 64))
    # 162 steps at the measured pace and the same start-up: far from the 24.8 s / 18 steps a whole run took.
    assert measured.total_seconds == pytest.approx(24.1 + 162 / 60 + 0.4)
    assert "the median of the latest 3 completed runs of tiny" in measured.explain()
    # Scoring counts by examples x new tokens: 4,096 new tokens cost 64 times what 64 did.
    long_answers = estimates.estimate({**config, "eval_max_new_tokens": 4096})
    assert long_answers.scoring_seconds == pytest.approx(64 * measured.scoring_seconds)
    assert long_answers.total_seconds > measured.total_seconds


def test_one_user_may_hold_only_so_many_active_runs(client, app):
    app.config["MAX_ACTIVE_RUNS_PER_USER"] = 2
    first, second = submit(client)["run_id"], submit(client)["run_id"]
    refused = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE})
    assert refused.status_code == 429 and "at most 2" in refused.get_json()["details"]["runs"]
    assert client.post("/api/tunix/run?mode=dry_run", json={"dataset_key": SAMPLE}).status_code == 200
    client.post(f"/api/tunix/runs/{first}/cancel")
    assert client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).status_code == 202
    assert second


def test_only_the_allowed_host_names_are_answered(app, client):
    assert client.get("/runs").status_code == 200
    rebound = client.get("/runs", headers={"Host": "attacker.example"})
    assert rebound.status_code == 400
    app.config["TRUSTED_HOSTS"] = ["tunix.example.com"]
    assert client.get("/api/health", headers={"Host": "tunix.example.com"}).status_code == 200
    assert client.get("/api/health", headers={"Host": "localhost"}).status_code == 400


def test_jsonl_lines_end_at_line_feeds_and_a_bom_is_fine():
    text = '\ufeff{"prompt": "a\u2028b", "response": "c\u0085d"}\r\n\n{"prompt": "e", "response": "f"}\n'
    examples = parse_jsonl(text.encode("utf-8"))
    assert [(e.prompt, e.response) for e in examples] == [("a\u2028b", "c\u0085d"), ("e", "f")]


def test_oversize_bodies_and_too_many_parts_get_413_with_a_true_message(client, app):
    app.config["MAX_CONTENT_LENGTH"] = 10_000
    big = client.post("/api/datasets", data=json.dumps({"name": "big", "jsonl": "x" * 20_000}),
                      content_type="application/json")
    assert big.status_code == 413 and "10000 bytes" in big.get_json()["details"]["body"]
    chunked = client.post("/api/datasets", input_stream=io.BytesIO(b"{" + b" " * 20_000 + b"}"),
                          content_type="application/json", headers={"Transfer-Encoding": "chunked"},
                          environ_overrides={"wsgi.input_terminated": True})  # as gunicorn marks a chunked body
    assert chunked.status_code == 413
    app.config.update(MAX_CONTENT_LENGTH=10_000_000, MAX_FORM_PARTS=50)
    parts = {f"field{i}": "x" for i in range(80)}
    many = client.post("/api/datasets", data={**parts, "name": "m", "file": (io.BytesIO(b""), "d.jsonl")})
    assert many.status_code == 413 and "form parts" in many.get_json()["details"]["body"]


def test_previews_are_cut_and_dry_runs_count_without_padding(client):
    long = "y" * 50_000
    client.post("/api/datasets", json={"name": "long", "examples": [{"prompt": long, "response": "ok"}]})
    page = client.get("/datasets/long-v1").get_data(as_text=True)
    assert long not in page and "y" * 1900 in page
    assert len(client.get("/api/datasets/long-v1").get_json()["preview"][0]["prompt"]) == 2000
    plan = client.post("/api/tunix/run?mode=dry_run", json={"dataset_key": SAMPLE, "max_seq_length": 32768})
    result = plan.get_json()["result"]
    assert result["tokens"]["max"] < 200 and result["examples_over_max_seq_length"] == 0


def test_uploads_are_capped_in_examples_and_in_the_size_of_one(client, app):
    app.config.update(DATASET_MAX_EXAMPLES=3, DATASET_MAX_EXAMPLE_BYTES=200)
    line = json.dumps({"prompt": "p", "response": "r"})
    many = client.post("/api/datasets", json={"name": "many", "jsonl": "\n".join([line] * 4)})
    assert many.status_code == 422 and "more than 3 examples" in many.get_json()["details"]["file"]
    listed = client.post("/api/datasets", json={"name": "many", "examples": [{"prompt": "p", "response": "r"}] * 4})
    assert listed.status_code == 422 and "more than 3 examples" in listed.get_json()["details"]["examples"]
    long = client.post("/api/datasets", json={"name": "long", "jsonl": json.dumps({"prompt": "x" * 300,
                                                                                   "response": "r"})})
    assert long.status_code == 422 and "longer than 200 bytes" in long.get_json()["details"]["file"]
    assert client.post("/api/datasets", json={"name": "fine", "jsonl": "\n".join([line] * 3)}).status_code == 201


def test_sync_runs_are_bounded_per_user_and_overall_below_the_web_threads(client, app, credentials, tmp_path):
    """A member's sync runs could once hold every gunicorn thread; now they wait their turn (429)."""
    import threading

    from app.extensions import db
    from tests.helpers import fake_trainer_command, make_user, wait_for
    from sqlalchemy import text

    release = tmp_path / "release"  # the sync runs' trainers run until the test has seen both limits hold
    app.config.update(TRAIN_COMMAND=fake_trainer_command("--wait-for", str(release)), MAX_SYNC_RUNS_PER_USER=1,
                      MAX_SYNC_RUNS=2)
    done = []

    def sync_run(token):
        with app.test_client() as c:
            done.append(c.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE},
                               headers={"Authorization": f"Bearer {token}"}).status_code)

    def under_way():
        db.session.expire_all()
        return db.session.execute(text("SELECT count(*) FROM tunix_runs WHERE mode = 'sync' "
                                       "AND status = 'running'")).scalar()

    first = threading.Thread(target=sync_run, args=(credentials.token,))
    first.start()
    wait_for(lambda: under_way() == 1)
    mine = client.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE})
    assert mine.status_code == 429 and "at most 1 sync runs of yours" in mine.get_json()["details"]["mode"]
    assert client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).status_code == 202
    other = make_user("other")
    second = threading.Thread(target=sync_run, args=(other.token,))
    second.start()
    wait_for(lambda: under_way() == 2)
    third = make_user("third")
    everyone = app.test_client().post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE},
                                      headers={"Authorization": f"Bearer {third.token}"})
    assert everyone.status_code == 429 and "for everyone" in everyone.get_json()["details"]["mode"]
    release.touch()
    first.join()
    second.join()
    assert done == [200, 200]
    assert client.post("/api/tunix/run?mode=sync", json={"dataset_key": SAMPLE}).status_code == 200
