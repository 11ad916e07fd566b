"""Evaluation as the platform keeps it: scoring rules, stored scores and answers, the run page, the API,
comparing runs and the leaderboard. The stand-in trainer scores as the real one does (--evaluate);
test_trainer.py scores with Tunix's own sampler."""
import json
import re

import pytest
from sqlalchemy import text

from app.contract import scoring
from tests.helpers import SAMPLE, fake_trainer_command, post_run, submit

EVALUATING = fake_trainer_command("--steps", "6", "--evaluate")


@pytest.fixture
def scoring_trainer(app):
    app.config["TRAIN_COMMAND"] = EVALUATING
    return app


def sync_run(client, **body) -> dict:
    run = submit(client, "sync", **body)
    assert run["status"] == "completed", run
    return run


@pytest.mark.parametrize("prediction, reference, exact, answer", [
    ("  The answer is\n 42. ", "The answer is 42.", True, True),
    ("so 6 * 7 = 42", "6 * 7 = 42. The answer is 42.", False, True),
    ("#### 1,200", "work... #### 1200.0", False, True),
    ("#### 12", "the total is 7 #### 13", False, False),
    ("it is 41", "The answer is 42.", False, False),
    ("Paris", "Paris", True, True),  # no number, no ####: the answer is the whole text
    ("paris", "Paris", False, False),
])
def test_scoring_rules(prediction, reference, exact, answer):
    assert scoring.judge(prediction, reference) == scoring.Verdict(exact, answer)


@pytest.mark.parametrize("pattern, text", [
    (r"(a+)+$", "a" * 34 + "!"),  # the audit's: Python's engine doubles its work per character
    (r"(x+x+)+y", "x" * 5000), (r"(?:(a|aa)+)+b", "a" * 5000), (r"(?:.*a){20}(z)", "a" * 4096),
])
def test_a_pathological_answer_pattern_is_matched_in_linear_time(pattern, text):
    """Each of these holds Python's own engine for minutes to ages; RE2 answers at once. No time is
    asserted (the suite does not time things): a backtracking engine would simply never finish."""
    compiled = scoring.compile_answer_pattern(pattern)
    for _ in range(100):
        assert scoring.extract_answer(text, compiled) in (None, "z")


def test_an_answer_pattern_overrides_the_default_rule():
    pattern = scoring.compile_answer_pattern(r"ANSWER: (\w+)")
    assert scoring.judge("ANSWER: no, wait, ANSWER: blue", "ANSWER: blue", pattern).answer
    assert not scoring.judge("blue", "ANSWER: blue", pattern).answer
    summary = scoring.summarize([scoring.Verdict(True, True), scoring.Verdict(False, True)], [4, 6], 2.0)
    assert summary == {"examples": 2, "exact_match": 0.5, "answer_match": 1.0, "mean_generated_tokens": 5.0,
                       "generation_tokens_per_second": 5.0, "seconds": 2.0}


@pytest.mark.parametrize("body, field, words", [
    ({"answer_pattern": "(a)(b)"}, "answer_pattern", "exactly one capturing group, not 2"),
    ({"answer_pattern": "no group"}, "answer_pattern", "exactly one capturing group, not 0"),
    ({"answer_pattern": "(unclosed"}, "answer_pattern", "is not a regular expression the linear-time matcher"),
    ({"answer_pattern": r"(\w)\1"}, "answer_pattern", "backreferences and lookaround are not supported"),
    ({"answer_pattern": r"(?<=is )(\d+)"}, "answer_pattern", "backreferences and lookaround are not supported"),
    ({"eval_dataset_key": "golden-v9"}, "eval_dataset_key", "unknown dataset 'golden-v9'"),
    ({"eval_max_examples": -1}, "eval_max_examples", "must be at least 0"),
    ({"eval_max_new_tokens": 0}, "eval_max_new_tokens", "must be at least 1"),
])
def test_evaluation_settings_are_checked(client, body, field, words):
    response = post_run(client, "async", **body)
    assert response.status_code == 422
    assert words in response.get_json()["details"][field]


def test_a_run_keeps_its_scores_and_answers(client, scoring_trainer, artifacts_root):
    run = sync_run(client, learning_rate=0.006, name="scored")
    evaluation = run["result"]["evaluation"]
    assert evaluation["before"]["answer_match"] == 0.0 and evaluation["after"]["answer_match"] == 0.6
    assert evaluation["examples"] == 5 and evaluation["dataset_key"] == SAMPLE
    assert run["answer_match"] == 0.6 and run["evaluated_on"] == SAMPLE and run["final_loss"] > 0
    lines = (artifacts_root / run["run_id"] / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 10 and {json.loads(line)["phase"] for line in lines} == {"before", "after"}

    first = client.get(f"/api/tunix/runs/{run['run_id']}/evaluation?limit=2").get_json()
    assert first["total"] == 5 and first["next_offset"] == 2 and first["evaluation"] == evaluation
    assert [e["index"] for e in first["examples"]] == [0, 1] and all(e["answer_match"] for e in first["examples"])
    rest = client.get(f"/api/tunix/runs/{run['run_id']}/evaluation?offset=2&limit=50").get_json()
    assert [e["answer_match"] for e in rest["examples"]] == [True, False, False] and rest["next_offset"] is None
    before = client.get(f"/api/tunix/runs/{run['run_id']}/evaluation?phase=before").get_json()
    assert not any(e["answer_match"] for e in before["examples"])
    bad = client.get(f"/api/tunix/runs/{run['run_id']}/evaluation?phase=during")
    assert bad.status_code == 422 and "phase" in bad.get_json()["details"]

    page = client.get(f"/runs/{run['run_id']}").get_data(as_text=True)
    assert "Answers after training" in page and "Before training" in page
    assert "60.0%" in page and "(+60.0 points)" in page and page.count("✓") >= 3
    assert f"/runs/{run['run_id']}/artifacts/predictions.jsonl" in page


def test_answers_on_the_page_are_escaped(client, scoring_trainer):
    hostile = "<script>alert(1)</script>"
    created = client.post("/api/datasets", json={"name": "hostile", "examples": [
        {"prompt": f"{hostile} {i}", "response": f"<b>{i}</b> #### {i}"} for i in range(8)]})
    assert created.status_code == 201
    run = sync_run(client, dataset_key="hostile-v1", learning_rate=0.01, batch_size=2)
    page = client.get(f"/runs/{run['run_id']}").get_data(as_text=True)
    assert hostile not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>" not in page and "&lt;b&gt;" in page


def test_a_skipped_or_failed_evaluation_says_why(client, scoring_trainer, app):
    run = sync_run(client, eval_max_examples=0)
    assert run["answer_match"] is None and run["evaluated_on"] is None
    assert "Not scored: eval_max_examples is 0." in client.get(f"/runs/{run['run_id']}").get_data(as_text=True)
    # A pass that raised, as the real trainer reports it.
    from app.extensions import db

    db.session.execute(text("UPDATE tunix_runs SET result = jsonb_set(result, '{evaluation}', "
                            "'{\"before\": null, \"after\": null, \"examples\": 5, \"dataset_key\": \"arithmetic-v1\", "
                            "\"source\": \"held-out split\", \"error\": \"evaluation failed after training: "
                            "ValueError: boom\"}') WHERE id = :id"), {"id": run["run_id"]})
    db.session.commit()
    page = client.get(f"/runs/{run['run_id']}").get_data(as_text=True)
    assert "evaluation failed after training: ValueError: boom. Training itself completed." in page


def test_evaluation_progress_shows_while_the_run_is_scored(client, app):
    from app.execution.recorder import ProgressRecorder
    from app.extensions import db

    run_id = submit(client, learning_rate=0.001)["run_id"]
    db.session.execute(text("UPDATE tunix_runs SET status = 'running', worker_id = 'w', attempt = 1 WHERE id = :id"),
                       {"id": run_id})
    db.session.commit()
    import uuid

    recorder = ProgressRecorder(uuid.UUID(run_id))
    recorder.on_event({"event": "start", "total_steps": 10})
    recorder.on_event({"event": "evaluate", "phase": "before", "done": 0, "total": 24})
    recorder.on_event({"event": "evaluate", "phase": "before", "done": 16, "total": 24})
    recorder.flush()
    fragment = client.get(f"/runs/{run_id}/status").get_data(as_text=True)
    assert "Evaluating before training: 16 of 24 answers generated." in fragment
    recorder.on_event({"event": "evaluate", "phase": "before", "done": 24, "total": 24,
                       "metrics": {"answer_match": 0.125, "exact_match": 0.0}})
    fragment = client.get(f"/runs/{run_id}/status").get_data(as_text=True)
    assert "Evaluating" not in fragment and "12.5%" in fragment


def test_the_runs_list_shows_loss_and_score_and_offers_compare(client, scoring_trainer):
    run = sync_run(client, learning_rate=0.008)
    page = client.get("/runs").get_data(as_text=True)
    row = page[page.index(f'id="run-row-{run["run_id"]}"'):]
    row = row[:row.index("</tr>")]
    assert f'name="ids" value="{run["run_id"]}" form="compare-form"' in row
    assert f"{run['final_loss']:.4f}" in row and "80.0%" in row
    assert 'action="/runs/compare"' in page


def test_compare_runs_by_api_and_page(client, scoring_trainer):
    slow = sync_run(client, learning_rate=0.002, name="slow <one>")
    fast = sync_run(client, learning_rate=0.008, name="fast")
    ids = f"{slow['run_id']},{fast['run_id']}"
    body = client.get(f"/api/tunix/runs/compare?ids={ids}").get_json()
    assert [r["run_id"] for r in body["runs"]] == [slow["run_id"], fast["run_id"]]
    assert body["config_differences"] == {"learning_rate": [0.002, 0.008]}
    metrics = {m["key"]: m for m in body["metrics"]}
    assert metrics["answer_match"]["values"] == [0.2, 0.8] and metrics["answer_match"]["best"] == [fast["run_id"]]
    assert metrics["final_loss"]["best"] == [fast["run_id"]]
    assert metrics["steps"]["best"] == []  # equal, and not a figure to win on
    assert len(body["series"][slow["run_id"]]["train"]) == 6

    page = client.get(f"/runs/compare?ids={slow['run_id']}&ids={fast['run_id']}").get_data(as_text=True)
    assert page.count('class="run-line run-0 train"') == 1 and 'class="run-line run-1 eval"' in page
    assert "slow &lt;one&gt;" in page and "slow <one>" not in page
    assert re.search(r'<th scope="row">learning_rate</th><td class="wrap">0.002</td><td class="wrap">0.008', page)
    assert page.count('class="number best"') >= 3


@pytest.mark.parametrize("query, words", [
    ("ids=", "select 2 to 8 runs to compare, not 0"),
    ("ids=6f1c2a4e-0000-4000-8000-000000000000", "select 2 to 8 runs to compare, not 1"),
    ("ids=nope,6f1c2a4e-0000-4000-8000-000000000000", "'nope' is not a run id"),
    ("ids=6f1c2a4e-0000-4000-8000-000000000000,6f1c2a4e-0000-4000-8000-000000000001",
     "no run with id 6f1c2a4e-0000-4000-8000-000000000000"),
])
def test_a_wrong_comparison_is_explained(client, query, words):
    api = client.get(f"/api/tunix/runs/compare?{query}")
    assert api.status_code == 422 and api.get_json()["details"]["ids"] == words
    page = client.get(f"/runs/compare?{query}")
    assert page.status_code == 422 and words.replace("'", "&#39;") in page.get_data(as_text=True)


def test_the_leaderboard_ranks_scored_runs_by_its_index(client, scoring_trainer, app):
    for rate in (0.002, 0.008, 0.004):
        sync_run(client, learning_rate=rate, name=f"lr {rate}")
    client.post("/api/datasets", json={"name": "golden", "examples": [
        {"prompt": f"q{i}", "response": f"#### {i}"} for i in range(6)]})
    sync_run(client, learning_rate=0.01, name="on golden", eval_dataset_key="golden-v1")

    board = client.get(f"/api/datasets/{SAMPLE}/leaderboard").get_json()
    assert [r["name"] for r in board["runs"]] == ["lr 0.008", "lr 0.004", "lr 0.002"]
    assert [r["rank"] for r in board["runs"]] == [1, 2, 3] and board["runs"][0]["answer_match"] == 0.8
    assert board["runs"][0]["hyperparameters"]["learning_rate"] == 0.008 and board["runs"][0]["created_by"] == "tester"
    golden = client.get("/api/datasets/golden-v1/leaderboard").get_json()
    assert [r["name"] for r in golden["runs"]] == ["on golden"] and golden["runs"][0]["dataset_key"] == SAMPLE
    second = client.get(f"/api/datasets/{SAMPLE}/leaderboard?offset=1&limit=1").get_json()
    assert [r["rank"] for r in second["runs"]] == [2]
    assert client.get("/api/datasets/none-v1/leaderboard").status_code == 404

    page = client.get(f"/datasets/{SAMPLE}/leaderboard").get_data(as_text=True)
    assert page.index("lr 0.008") < page.index("lr 0.004") < page.index("lr 0.002") and "on golden" not in page

    from sqlalchemy.dialects import postgresql

    from app.extensions import db
    from app.runs import evaluation

    # The query walks the leaderboard index in its own order: no sort, and no scan of other datasets.
    sql = str(evaluation.leaderboard_query(SAMPLE, 50, 0).compile(
        dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
    db.session.execute(text("SET LOCAL enable_seqscan = off"))
    plan = "\n".join(row[0] for row in db.session.execute(text("EXPLAIN " + sql)))
    db.session.rollback()
    assert "ix_tunix_runs_leaderboard" in plan and "Sort" not in plan, plan
