"""Sweeps: Optuna chooses, the Postgres queue runs the trials on real worker.py processes."""
import pytest
from sqlalchemy import text

from app.extensions import db
from tests.helpers import SAMPLE, fake_trainer_command, wait_for

# The stand-in trainer's final loss is 4 / (steps * (1 + 100 * learning_rate)): the highest rate wins.
SCORING = ["--steps", "4", "--evaluate"]
LR_SPACE = {"learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}}


def sweep_body(**overrides) -> dict:
    body = {"name": "lr-search", "base": {"dataset_key": SAMPLE, "max_steps": 4},
            "space": LR_SPACE, "objective": {"metric": "final_loss", "direction": "minimize"},
            "max_trials": 6, "parallelism": 2, "sampler": "random", "pruner": "none"}
    body.update(overrides)
    return body


def create(client, **overrides) -> str:
    response = client.post("/api/sweeps", json=sweep_body(**overrides))
    assert response.status_code == 201, response.get_json()
    assert response.headers["Location"].endswith(f"/api/sweeps/{response.get_json()['sweep_id']}")
    return response.get_json()["sweep_id"]


def sweep(client, sweep_id: str) -> dict:
    return client.get(f"/api/sweeps/{sweep_id}").get_json()


def sweep_runs(sweep_id: str) -> list:
    db.session.rollback()
    return db.session.execute(text(
        "SELECT id, status, trial_number, created_at, started_at, completed_at, recoveries, attempt, config "
        "FROM tunix_runs WHERE sweep_id = :id ORDER BY trial_number"), {"id": sweep_id}).all()


def most_active_at_once(runs) -> int:
    """From the database timeline: the most trials that were queued or running at the same instant."""
    events = sorted([(r.created_at, 1) for r in runs] + [(r.completed_at, -1) for r in runs if r.completed_at],
                    key=lambda e: (e[0], e[1]))
    active = peak = 0
    for _, change in events:
        active += change
        peak = max(peak, active)
    return peak


@pytest.mark.parametrize("change, field, words", [
    ({"space": {"learning_rte": {"type": "uniform", "low": 0.1, "high": 0.2}}}, "space.learning_rte",
     "runs have no hyperparameter 'learning_rte'"),
    ({"space": {"learning_rate": {"type": "uniform", "low": 0.5, "high": 2}}}, "space.learning_rate",
     "2 must be greater than 0 and at most 1"),
    ({"space": {"batch_size": {"type": "uniform", "low": 2, "high": 8}}}, "space.batch_size",
     "is a whole number: use int"),
    ({"space": {"lora_rank": {"type": "int", "low": 4, "high": 30, "step": 4}}}, "space.lora_rank",
     "high - low must be a multiple of step"),
    ({"space": {"learning_rate": {"type": "log_uniform", "low": 0.01, "high": 0.001}}}, "space.learning_rate",
     "low must be below high"),
    ({"space": {"finetune": {"type": "choice", "values": ["full", "qlora"]}}}, "space.finetune",
     "'qlora' must be one of full, lora"),
    ({"space": {}}, "space", "must be an object naming at least one hyperparameter"),
    ({"objective": {"metric": "accuracy"}}, "objective.metric", "must be one of"),
    ({"max_trials": 0}, "max_trials", "must be a whole number from 1 to 1000"),
    ({"parallelism": 500}, "parallelism", "must be a whole number from 1 to 20"),
    ({"sampler": "grid"}, "sampler", "grid takes choice parameters only"),
    ({"sampler": "grid", "max_trials": 3, "space": {"batch_size": {"type": "choice", "values": [4, 8]}}},
     "max_trials", "the grid holds 2 combinations"),
    ({"pruner": "median"}, "pruner", "use it with final_eval_loss or best_eval_loss, not final_loss"),
    ({"base": {"dataset_key": "nope-v1"}}, "base.dataset_key", "unknown dataset 'nope-v1'"),
    ({"base": {"dataset_key": SAMPLE, "batch_size": 0}}, "base.batch_size", "must be at least 1"),
    ({"name": ""}, "name", "is required"),
    ({"extra": 1}, "extra", "unknown field"),
])
def test_a_bad_sweep_is_refused_naming_the_field(client, change, field, words):
    response = client.post("/api/sweeps", json=sweep_body(**change))
    assert response.status_code == 422, response.get_json()
    assert words in response.get_json()["details"][field], response.get_json()["details"]
    assert client.get("/api/sweeps").get_json()["sweeps"] == []


def test_a_sweep_queues_its_first_trials_as_ordinary_runs(client):
    sweep_id = create(client)
    body = sweep(client, sweep_id)
    assert body["status"] == "running" and body["trials_asked"] == 2
    assert [t["number"] for t in body["trials"]] == [1, 2] and all(t["state"] == "running" for t in body["trials"])
    runs = sweep_runs(sweep_id)
    assert [(r.status, r.trial_number) for r in runs] == [("pending", 1), ("pending", 2)]
    for trial, run in zip(body["trials"], runs):
        assert str(run.id) == trial["run_id"]
        assert run.config["learning_rate"] == trial["params"]["learning_rate"]
        assert 1e-4 <= run.config["learning_rate"] <= 1e-2 and run.config["max_steps"] == 4
    page = client.get(f"/runs/{runs[0].id}").get_data(as_text=True)
    assert f'href="/sweeps/{sweep_id}"' in page and "trial 1 of 6" in page
    scrape = client.get("/metrics").get_data(as_text=True)
    assert 'tunix_sweeps{status="running"} 1.0' in scrape and 'tunix_sweeps{status="completed"} 0.0' in scrape
    assert 'tunix_sweep_trials{state="running"} 2.0' in scrape


def test_six_trials_two_at_a_time_on_two_workers(client, worker_env, start_worker):
    sweep_id = create(client)
    command = fake_trainer_command(*SCORING, "--sleep", "0.5")
    for _ in range(2):
        start_worker(worker_env(command))
    wait_for(lambda: sweep(client, sweep_id)["status"] != "running", timeout=120)
    body = sweep(client, sweep_id)
    assert body["status"] == "completed" and body["trials_asked"] == 6
    runs = sweep_runs(sweep_id)
    assert len(runs) == 6 and [r.trial_number for r in runs] == [1, 2, 3, 4, 5, 6]
    assert all(r.status == "completed" for r in runs)
    assert most_active_at_once(runs) == 2
    # The best trial is the one with the highest learning rate, as the stand-in trainer's loss says.
    best = max(body["trials"], key=lambda t: t["params"]["learning_rate"])
    assert body["best_trial_number"] == best["number"] and body["best"]["run_id"] == best["run_id"]
    assert body["best_value"] == min(t["value"] for t in body["trials"])
    assert {t["state"] for t in body["trials"]} == {"complete"}

    page = client.get(f"/sweeps/{sweep_id}").get_data(as_text=True)
    assert f"Best trial: #{best['number']}" in page and 'class="best-so-far"' in page
    assert page.count('<circle class="trial"') == 12  # six on each chart: by trial, and against learning_rate
    assert "learning_rate (log scale)" in page and "hx-get" not in page  # the sweep ended: no more polls
    listing = client.get("/sweeps").get_data(as_text=True)
    assert "lr-search" in listing and "6 of 6" in listing


def test_a_killed_worker_leaves_the_trial_to_be_recovered(client, worker_env, start_worker):
    lease = {"TUNIX_HEARTBEAT_SECONDS": "1", "TUNIX_LEASE_TIMEOUT_SECONDS": "4"}
    sweep_id = create(client, max_trials=3, parallelism=1, base={"dataset_key": SAMPLE, "max_steps": 4,
                                                                  "max_attempts": 2})
    doomed = start_worker(worker_env(fake_trainer_command(*SCORING, "--sleep", "30"), **lease))
    wait_for(lambda: [r.status for r in sweep_runs(sweep_id)] == ["running"], timeout=30)
    doomed.kill()
    doomed.wait()
    start_worker(worker_env(fake_trainer_command(*SCORING), **lease))
    wait_for(lambda: sweep(client, sweep_id)["status"] != "running", timeout=90)
    body = sweep(client, sweep_id)
    assert body["status"] == "completed" and body["trials_asked"] == 3
    runs = sweep_runs(sweep_id)
    assert len(runs) == 3 and all(r.status == "completed" for r in runs)
    first = runs[0]
    assert first.trial_number == 1 and first.recoveries == 1 and first.attempt == 2
    assert body["trials"][0]["run_id"] == str(first.id) and body["trials"][0]["state"] == "complete"


def test_cancelling_a_sweep_leaves_nothing_pending_or_running(client, worker_env, start_worker):
    sweep_id = create(client, max_trials=8, parallelism=3)
    start_worker(worker_env(fake_trainer_command(*SCORING, "--sleep", "60")))
    wait_for(lambda: "running" in [r.status for r in sweep_runs(sweep_id)], timeout=30)
    response = client.post(f"/api/sweeps/{sweep_id}/cancel")
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
    wait_for(lambda: all(r.status == "cancelled" for r in sweep_runs(sweep_id)), timeout=30)
    assert len(sweep_runs(sweep_id)) == 3
    from app.sweeps import service  # nothing is asked after the cancel, even by housekeeping

    service.advance_running()
    assert len(sweep_runs(sweep_id)) == 3 and sweep(client, sweep_id)["status"] == "cancelled"
    assert client.post(f"/api/sweeps/{sweep_id}/cancel").status_code == 409


def test_only_the_owner_or_an_admin_may_cancel(client, app):
    from tests.helpers import make_user, sign_in

    sweep_id = create(client, max_trials=2, parallelism=1)
    other = sign_in(app.test_client(), make_user("someone"))
    assert other.post(f"/api/sweeps/{sweep_id}/cancel").status_code == 403
    assert other.get(f"/api/sweeps/{sweep_id}").status_code == 200
    assert client.get("/api/sweeps/not-a-sweep").status_code == 404


def form_for(**changes) -> dict:
    form = {"name": "form sweep", "objective.metric": "final_loss", "max_trials": "4", "parallelism": "2",
            "sampler": "tpe", "pruner": "none", "base.dataset_key": SAMPLE, "base.model_id": "tiny",
            "base.max_steps": "20", "base.learning_rate": "0.001", "base.batch_size": "4",
            "space.learning_rate.type": "log_uniform", "space.learning_rate.low": "0.0001",
            "space.learning_rate.high": "0.01", "space.batch_size.type": "choice", "space.batch_size.values": "4, 8"}
    form.update(changes)
    return form


def test_the_form_starts_a_sweep_and_its_page_polls_until_it_ends(client):
    new = client.get("/sweeps/new").get_data(as_text=True)
    assert 'name="space.learning_rate.type"' in new and 'name="base.dataset_key"' in new
    response = client.post("/sweeps/new", data=form_for())
    assert response.status_code == 303
    sweep_id = response.headers["Location"].rsplit("/", 1)[1]
    body = sweep(client, sweep_id)
    assert body["space"] == {"learning_rate": {"type": "log_uniform", "low": 0.0001, "high": 0.01},
                             "batch_size": {"type": "choice", "values": [4, 8]}}
    assert body["base"]["max_steps"] == 20 and body["trials_asked"] == 2
    page = client.get(f"/sweeps/{sweep_id}").get_data(as_text=True)
    assert f'hx-get="/sweeps/{sweep_id}/status"' in page and "No trial has finished with a value yet." in page
    fragment = client.get(f"/sweeps/{sweep_id}/status").get_data(as_text=True)
    assert fragment.count("<tr>") >= 2 and "pending" in fragment
    confirm = client.get(f"/sweeps/{sweep_id}/cancel").get_data(as_text=True)
    assert "Yes, cancel the sweep" in confirm
    assert client.post(f"/sweeps/{sweep_id}/cancel").status_code == 303
    fragment = client.get(f"/sweeps/{sweep_id}/status").get_data(as_text=True)
    assert "hx-get" not in fragment and "cancelled" in fragment


def test_a_rejected_form_keeps_what_was_typed_and_names_each_field(client):
    response = client.post("/sweeps/new", data=form_for(**{
        "space.learning_rate.high": "3", "space.batch_size.values": "4, x", "max_trials": "many"}))
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert 'id="space.learning_rate-error"' in page and "3 must be greater than 0 and at most 1" in page
    assert "must be a whole number, got &#39;x&#39;" in page and 'id="max_trials-error"' in page
    assert 'value="4, x"' in page and 'value="form sweep"' in page
    assert client.get("/api/sweeps").get_json()["sweeps"] == []


def test_the_median_pruner_stops_trials_that_trail(client, worker_env, start_worker):
    # Trials 1-3 learn normally; from trial 4 on the eval loss is 10 higher from the first eval, so the
    # median pruner (3 trials to start from) stops each at its first report, through the cancel path.
    sweep_id = create(client, max_trials=5, parallelism=1, pruner="median",
                      objective={"metric": "final_eval_loss"})
    start_worker(worker_env(fake_trainer_command(*SCORING, "--evals", "4", "--eval-sleep", "0.5",
                                                 "--worse-after-trial", "3")))
    wait_for(lambda: sweep(client, sweep_id)["status"] != "running", timeout=120)
    body = sweep(client, sweep_id)
    assert body["status"] == "completed"
    assert [t["state"] for t in body["trials"]] == ["complete"] * 3 + ["pruned"] * 2
    for trial in body["trials"][3:]:
        assert trial["pruned_at_step"] == 1 and trial["note"] == "pruned at step 1"
        assert trial["run_status"] == "cancelled"
    assert body["best_trial_number"] in (1, 2, 3)
    page = client.get(f"/sweeps/{sweep_id}").get_data(as_text=True)
    assert "2 pruned" in page


@pytest.mark.parametrize("sizes", [(50, 50, 50, 50), (50, 50, 5), (3,) * 9])
def test_a_grid_is_bounded_before_any_of_it_is_built(client, sizes):
    """The audit's 6.25 M combinations, and other shapes past the bound: each a 422 naming the space."""
    fields = {"learning_rate": lambda k: 0.0001 * (k + 1), "weight_decay": lambda k: k / 100,
              "seed": lambda k: k, "batch_size": lambda k: k + 1, "warmup_steps": lambda k: k,
              "lora_rank": lambda k: k + 1, "lora_alpha": lambda k: k + 1.0, "eval_fraction": lambda k: k / 100,
              "num_epochs": lambda k: k + 1, "max_seq_length": lambda k: 8 + k,
              "checkpoint_every_n_steps": lambda k: k + 1, "eval_every_n_steps": lambda k: k + 1}
    space = {name: {"type": "choice", "values": [make(k) for k in range(size)]}
             for (name, make), size in zip(fields.items(), sizes)}
    response = client.post("/api/sweeps", json=sweep_body(sampler="grid", max_trials=10, space=space))
    assert response.status_code == 422, response.get_json()
    assert "more than the 10,000 a grid sweep may hold" in response.get_json()["details"]["space"]
    assert client.get("/api/sweeps").get_json()["sweeps"] == []


def test_a_grid_at_the_bound_is_a_sweep(client):
    space = {"learning_rate": {"type": "choice", "values": [0.0001 * (k + 1) for k in range(50)]},
             "seed": {"type": "choice", "values": list(range(50))},
             "batch_size": {"type": "choice", "values": [1, 2, 4, 8]}}
    response = client.post("/api/sweeps", json=sweep_body(sampler="grid", max_trials=5, space=space))
    assert response.status_code == 201, response.get_json()


def _active_runs() -> int:
    return db.session.execute(text("SELECT count(*) FROM tunix_runs WHERE status IN "
                                   "('pending', 'running', 'cancelling')")).scalar()


def test_runs_and_sweeps_share_one_limit_whatever_the_mix(client, app):
    """The audit's way round the limit (two sweeps of parallelism 20 on top of 20 runs) and any other mix:
    submitted runs, sweeps, cancels and the workers' housekeeping, in any order; never past the limit."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    from app.sweeps import service as sweep_service

    app.config.update(MAX_ACTIVE_RUNS_PER_USER=5, MAX_ACTIVE_SWEEPS_PER_USER=2)
    actions = st.lists(st.one_of(st.tuples(st.just("run"), st.integers(1, 3)),
                                 st.tuples(st.just("sweep"), st.integers(1, 5)),
                                 st.tuples(st.just("cancel"), st.integers(0, 4)),
                                 st.tuples(st.just("advance"), st.just(0))), min_size=1, max_size=12)

    @settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(actions)
    def never_past_the_limit(steps):
        db.session.execute(text("UPDATE tunix_runs SET status = 'cancelled' WHERE status = 'pending'"))
        db.session.execute(text("UPDATE sweeps SET status = 'cancelled' WHERE status = 'running'"))
        db.session.commit()
        for action, n in steps:
            if action == "run":
                for _ in range(n):
                    code = client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).status_code
                    assert code in (202, 429)
            elif action == "sweep":
                response = client.post("/api/sweeps", json=sweep_body(parallelism=n, max_trials=8))
                assert response.status_code in (201, 429), response.get_json()
            elif action == "cancel":
                pending = db.session.execute(text("SELECT id FROM tunix_runs WHERE status = 'pending' "
                                                  "ORDER BY created_at LIMIT 1 OFFSET :n"), {"n": n}).scalar()
                if pending:
                    client.post(f"/api/tunix/runs/{pending}/cancel")
            else:
                sweep_service.advance_running()
            assert _active_runs() <= 5, steps
            running_sweeps = db.session.execute(text("SELECT count(*) FROM sweeps WHERE status = 'running'")).scalar()
            assert running_sweeps <= 2, steps

    never_past_the_limit()


def test_a_sweep_waits_for_room_and_takes_it_when_runs_end(client, app):
    from app.sweeps import service as sweep_service

    app.config.update(MAX_ACTIVE_RUNS_PER_USER=4)
    runs = [client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).get_json()["run_id"]
            for _ in range(3)]
    sweep_id = create(client, parallelism=3, max_trials=6)
    assert _active_runs() == 4  # one trial: the room left
    assert client.post("/api/tunix/run?mode=async", json={"dataset_key": SAMPLE}).status_code == 429
    refused = client.post("/api/sweeps", json=sweep_body())
    assert refused.status_code == 429 and "a sweep's trials included" in refused.get_json()["details"]["runs"]
    for run_id in runs[:2]:
        client.post(f"/api/tunix/runs/{run_id}/cancel")
    sweep_service.advance_running()
    trials = db.session.execute(text("SELECT count(*) FROM tunix_runs WHERE sweep_id = :id AND status = 'pending'"),
                                {"id": sweep_id}).scalar()
    assert trials == 3 and _active_runs() == 4
