"""What the pages say is true and readable: phases and time left, plans that warn, scores with their basis,
comparisons that say what they compare, forms in their own words, links that work for a browser."""
import html
import json
import re

from sqlalchemy import text

from app.extensions import db
from tests.helpers import SAMPLE, fake_trainer_command, submit


def _set(run_id: str, **columns) -> None:
    sets = ", ".join(f"{k} = CAST(:{k} AS jsonb)" if k in ("progress", "result") else f"{k} = :{k}" for k in columns)
    values = {k: json.dumps(v) if k in ("progress", "result") else v for k, v in columns.items()}
    # Every write a page shows bumps the run's version, as the recorder's and the lifecycle's do.
    db.session.execute(text(f"UPDATE tunix_runs SET {sets}, version = version + 1 WHERE id = :id"),
                       {**values, "id": run_id})
    db.session.commit()


def _status_block(client, run_id: str) -> str:
    return client.get(f"/runs/{run_id}/status?seen=running").get_data(as_text=True)


def test_the_page_names_the_phase_and_bases_the_time_left_on_what_is_still_to_come(client):
    run_id = submit(client)["run_id"]
    _set(run_id, status="running", worker_id="w", attempt=1,
         progress={"phase": "loading", "total_steps": 162})
    block = _status_block(client, run_id)
    assert "Starting: loading the model." in block and " left" not in block
    before = {"examples": 24, "batch_size": 16, "batch_seconds": 0.5, "answer_match": 0.0}
    _set(run_id, progress={"phase": "training", "total_steps": 162, "step": 1, "elapsed_seconds": 9.0,
                           "evaluation_before": before})
    block = _status_block(client, run_id)
    # Step 1 compiled: no pace yet, so no number (it once said "about 6 min 55 s left" here).
    assert "Training." in block and " left" not in block and "training for 9.0 s" in block
    _set(run_id, progress={"phase": "training", "total_steps": 162, "step": 62, "elapsed_seconds": 15.0,
                           "seconds_per_step": 0.1, "evaluation_before": before})
    assert "about 11.0 s left" in _status_block(client, run_id)  # 100 steps x 0.1 s + 2 batches x 0.5 s
    _set(run_id, progress={"phase": "scoring_after", "total_steps": 162, "step": 162, "seconds_per_step": 0.1,
                           "evaluation_before": before, "evaluating": {"phase": "after", "done": 0, "total": 24}})
    block = _status_block(client, run_id)
    assert "Scoring the model after training." in block and "about 1.0 s left" in block
    assert "elapsed" not in block
    _set(run_id, progress={"phase": "storing", "total_steps": 162, "step": 162, "evaluation_before": before})
    assert "Storing files" in _status_block(client, run_id)

    _set(run_id, status="completed", completed_at="2026-01-01T00:00:25Z", duration_seconds=24.8,
         result={"steps": 162, "final_loss": 1.0, "train_seconds": 10.0, "final_eval_loss": 1.5,
                 "final_eval_step": 0, "best_eval_loss": 1.5})
    block = _status_block(client, run_id)
    assert "after 24.8 s" in block and "Training time</dt><dd>10.0 s of 24.8 s in all" in block
    assert "elapsed" not in block and "Storing" not in block
    # A run from before the last step was always evaluated says its eval loss is the untrained one.
    assert "1.5000 (at step 0)" in block and "not measured after the last step" in block


def test_a_plan_warns_about_a_cadence_past_the_steps_and_about_fewer_examples_to_score(client):
    plan = client.post("/api/tunix/run?mode=dry_run", json={"dataset_key": SAMPLE, "max_steps": 18,
                                                             "eval_every_n_steps": 20}).get_json()
    result = plan["result"]
    assert result["scored_examples"] == 24
    assert result["notes"] == [
        "eval_every_n_steps: 20 is more than the 18 steps, so the eval loss is measured only before the first "
        "step and after the last",
        "eval_max_examples: 200 asked, but the held-out split (0.1 of 240 examples) holds 24, so 24 are scored"]
    page = client.get(f"/runs/{plan['run_id']}").get_data(as_text=True)
    assert "24 of the 200 asked, before and after training" in page and "is more than the 18 steps" in page
    fine = client.post("/api/tunix/run?mode=dry_run", json={"dataset_key": SAMPLE, "eval_max_examples": 10})
    assert fine.get_json()["result"]["notes"] == []


def test_scores_show_how_many_answers_they_rest_on_and_what_they_mean(client, app):
    app.config["TRAIN_COMMAND"] = fake_trainer_command("--evaluate")
    run = submit(client, "sync", learning_rate=0.006)  # the stand-in gets 3 of its 5 answers right
    page = client.get(f"/runs/{run['run_id']}").get_data(as_text=True)
    assert "60.0%" in page and "3 of 5, 95 % interval 23.1–88.2%" in page
    assert "0 of 5, 95 % interval 0.0–43.4%" in page  # before training: not zero-width at 0 %
    assert "the whole answer equals the reference" in page and "the text after the last <code>####</code>" in page


def test_the_run_page_links_a_browser_to_the_api_help_not_to_a_401(client, app):
    app.config["TRAIN_COMMAND"] = fake_trainer_command("--evaluate")
    run_id = submit(client, "sync")["run_id"]
    page = client.get(f"/runs/{run_id}").get_data(as_text=True)
    assert f'href="/api/tunix/runs/{run_id}/evaluation"' not in page
    assert f'href="/help/api?run_id={run_id}"' in page
    client.environ_base.pop("HTTP_AUTHORIZATION")  # a browser: the session alone
    help_page = client.get(f"/help/api?run_id={run_id}")
    assert help_page.status_code == 200
    body = help_page.get_data(as_text=True)
    assert f'curl -H &#34;Authorization: Bearer $TUNIX_TOKEN&#34; http://localhost/api/tunix/runs/{run_id}/status' \
        in body
    routes = {html.unescape(r) for r in re.findall(r"<td><code>(/api/[^<]*)</code></td>", body)}
    expected = {rule.rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/")}
    assert routes == expected
    assert "Scores before and after training, and one page of the scored answers" in body
    assert 'href="/api/openapi.json"' in body
    assert client.get("/api/openapi.json").status_code == 200, "the contract opens in the browser, without a token"


def test_compare_says_what_it_compares_and_which_way_is_better(client, app):
    app.config["TRAIN_COMMAND"] = fake_trainer_command("--evaluate")
    client.post("/api/datasets", json={"name": "other", "examples": [{"prompt": f"q{i}", "response": f"#### {i}"}
                                                                     for i in range(40)]})
    first = submit(client, "sync", learning_rate=0.002)["run_id"]
    second = submit(client, "sync", learning_rate=0.008, dataset_key="other-v1")["run_id"]
    _set(first, duration_seconds=17050.0)
    page = client.get(f"/runs/compare?ids={first},{second}").get_data(as_text=True)
    assert "trained on different datasets (arithmetic-v1, other-v1)" in page
    assert "scored on different eval sets" in page
    assert "Training tokens/s <span class=\"direction\">(higher is better)</span>" in page
    assert "Duration <span class=\"direction\">(lower is better)</span>" in page
    assert "4 h 44 min" in page and "1.705e+04" not in page and "1,000" in page
    assert "of 5</span>" in page  # a rate says how many answers it rests on
    # Durations that print the same are not ranked (one was starred over the other at "0.3 s" both).
    _set(first, duration_seconds=0.31)
    _set(second, duration_seconds=0.34)
    page = client.get(f"/runs/compare?ids={first},{second}").get_data(as_text=True)
    duration_row = page.split("Duration <span")[1].split("</tr>")[0]
    assert duration_row.count("0.3 s") == 2 and "★" not in duration_row
    api = client.get(f"/api/tunix/runs/compare?ids={first},{second}").get_json()
    assert len(api["warnings"]) == 2 and {row["better"] for row in api["metrics"]} >= {"min", "max", None}


def test_a_refused_form_lists_its_problems_by_label_in_the_form_s_order_in_one_round(client):
    response = client.post("/runs/new", data={"dataset_key": SAMPLE, "mode": "async", "batch_size": "zero",
                                              "learning_rate": "-1", "max_steps": "5", "warmup_steps": "9",
                                              "tags": "a b"})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    summary = page.split('id="error-summary"')[1].split("</ul>")[0]
    labels = re.findall(r'<a href="#([a-z_]+)">([^<]+)</a>', summary)
    assert labels == [("tags", "Tags"), ("learning_rate", "Learning rate"), ("warmup_steps", "Warmup steps"),
                      ("batch_size", "Batch size")]
    # The problem between two fields came with the others, in the form's words.
    assert "must be smaller than “Max steps” (5)" in summary
    # The warmup past the steps a dataset gives is refused with the rest too (it once came a round later).
    again = client.post("/runs/new", data={"dataset_key": SAMPLE, "mode": "async", "warmup_steps": "500",
                                           "learning_rate": "-1"}).get_data(as_text=True)
    assert "must be smaller than the 162 steps this run will take" in again and "Learning rate" in again


def test_one_form_submission_starts_one_run_however_often_it_is_sent(client):
    form = client.get("/runs/new").get_data(as_text=True)
    submission = re.search(r'name="submission" value="([0-9a-f]{32})"', form)[1]
    data = {"dataset_key": SAMPLE, "mode": "async", "submission": submission}
    first = client.post("/runs/new", data=data)
    second = client.post("/runs/new", data=data)
    assert first.status_code == second.status_code == 303
    assert first.headers["Location"] == second.headers["Location"]
    assert len(client.get("/api/tunix/runs").get_json()["runs"]) == 1
    # The same form sent back with other settings (back, edit, send) is a new run, not a conflict.
    changed = client.post("/runs/new", data={**data, "learning_rate": "0.002"})
    assert changed.status_code == 303 and changed.headers["Location"] != first.headers["Location"]
    # Its progress, for the form's panel, is its sender's alone.
    run_id = first.headers["Location"].rsplit("/", 1)[1]
    assert run_id in client.get(f"/runs/submitted/{submission}").get_data(as_text=True)


def test_small_things_a_first_afternoon_found(client, app):
    client.environ_base.pop("HTTP_AUTHORIZATION")
    anonymous = app.test_client().get("/login").get_data(as_text=True)
    assert 'aria-label="Main"' not in anonymous and "New run" not in anonymous
    assert 'aria-label="Main"' in client.get("/runs").get_data(as_text=True)
    form = client.get("/runs/new").get_data(as_text=True)
    assert 'class="field field-lora"' in form  # hidden by the stylesheet unless LoRA is chosen


def test_a_sweep_says_completed_and_shows_a_loss_as_every_page_does(client):
    import uuid

    from app.sweeps import service as sweep_service

    sweep_id = client.post("/api/sweeps", json={
        "name": "lr search", "base": {"dataset_key": SAMPLE, "max_steps": 40},
        "space": {"learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}},
        "objective": {"metric": "final_eval_loss"}, "max_trials": 3, "parallelism": 1}).get_json()["sweep_id"]
    db.session.execute(text("UPDATE tunix_runs SET status = 'completed', final_eval_loss = 1.23456789, "
                            "completed_at = now(), started_at = now() WHERE sweep_id = :id AND trial_number = 1"),
                       {"id": sweep_id})
    db.session.commit()
    sweep_service.advance(uuid.UUID(sweep_id))
    page = client.get(f"/sweeps/{sweep_id}").get_data(as_text=True)
    trials = page.split('class="trials"')[1].split("</table>")[0]
    assert ">completed" in trials and ">complete<" not in trials
    assert "1.2346" in page and "1.23457" not in page  # a loss to 4 decimals, as on the run and compare pages
    assert "final_eval_loss 1.2346" in page
    assert "1.2346 (trial 1)" in client.get("/sweeps").get_data(as_text=True)
