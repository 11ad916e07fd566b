"""The playground: bounds, the per-user limit, permissions, workers answering with the real generation server
(JAX on the CPU), cancel in flight, a worker killed mid-answer, and the page side by side in a browser."""
import os
import signal
import sys

import pytest

from tests.helpers import alive, make_user, needs_chromium, processes_mentioning, sign_in, wait_for

ASK = {"model": "tiny", "prompts": ["what is 2 + 2?"], "settings": {"max_new_tokens": 8}}


def ask(client, **body):
    return client.post("/api/generate", json={**ASK, **body})


def state(client, request_id):
    return client.get(f"/api/generate/{request_id}").get_json()


def ended(client, request_id):
    row = state(client, request_id)
    return row if row["status"] in ("completed", "failed", "cancelled") else None


def playground_worker(worker_env, start_worker, **extra):
    env = worker_env(TUNIX_HEARTBEAT_SECONDS="0.5", **extra)
    return start_worker(env)


def servers_of(worker) -> list[int]:
    """The generation servers a worker process started that are still alive."""
    found = []
    for pid in processes_mentioning("app.trainer.serve"):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                parent = int(stat.read().rsplit(") ", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == worker.pid:
            found.append(pid)
    return found


def test_a_request_is_checked_field_by_field(client):
    accepted = ask(client)
    assert accepted.status_code == 202
    row = accepted.get_json()
    assert row["status"] == "pending" and row["model_key"] == "preset:tiny" and row["answers"] == []
    assert row["settings"] == {"max_new_tokens": 8, "temperature": 0.0, "top_p": None, "top_k": None, "seed": 0}
    assert accepted.headers["Location"].endswith(f"/api/generate/{row['id']}")
    assert row["wait"] == {"requests_ahead": 0, "runs_ahead": 0, "workers": 0}

    refused = ask(client, model="huge", prompts=[], settings={
        "max_new_tokens": 100_000, "temperature": -1, "top_k": 0, "seed": "x", "beams": 4}).get_json()
    assert set(refused["details"]) == {"model", "prompts", "settings.max_new_tokens", "settings.temperature",
                                       "settings.top_k", "settings.seed", "settings.beams"}
    assert "unknown model 'huge'" in refused["details"]["model"]
    assert refused["details"]["settings.max_new_tokens"] == "must be from 1 to 512, got 100000"
    assert refused["details"]["settings.beams"] == "unknown setting"

    details = ask(client, prompts=["x" * 4001, " ", *["ok"] * 6]).get_json()["details"]
    assert details == {"prompts[0]": "must be at most 4000 characters, got 4001",
                       "prompts[1]": "must be a non-blank string"}
    assert "at most 8 prompts" in ask(client, prompts=["a"] * 9).get_json()["details"]["prompts"]
    greedy_with_top_p = ask(client, settings={"top_p": 0.9}).get_json()["details"]
    assert greedy_with_top_p == {"settings.top_p": "applies only when sampling: set a temperature above 0"}
    assert ask(client, settings={"temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 3}).status_code == 202
    assert ask(client, colour="blue").get_json()["details"] == {"colour": "unknown field"}

    unknown_run = ask(client, model="runs:/0b7ed6f8-0000-4000-8000-000000000000").get_json()["details"]
    assert unknown_run["model"].startswith("no run with id")
    queued = client.post("/api/tunix/run?mode=async", json={"dataset_key": "arithmetic-v1"}).get_json()
    not_done = ask(client, model=f"runs:/{queued['run_id']}").get_json()["details"]["model"]
    assert not_done == f"run {queued['run_id'][:8]} exported no model (it is pending)"
    assert ask(client, model="models:/nothing@champion").get_json()["details"]["model"] == \
        "no registered model named 'nothing'"
    assert client.get("/api/generate/not-an-id").status_code == 404


def test_each_user_may_have_only_so_many_requests_waiting(app, client):
    app.config["PLAYGROUND_MAX_WAITING"] = 3
    ids = [ask(client).get_json()["id"] for _ in range(3)]
    refused = ask(client)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"
    assert "you have 3 playground requests waiting (at most 3)" in refused.get_json()["error"]
    # Another user has a queue of their own; a cancelled request makes room again.
    with app.app_context():
        other = sign_in(app.test_client(), make_user("other"))
    assert other.post("/api/generate", json=ASK).status_code == 202
    assert client.post(f"/api/generate/{ids[0]}/cancel").get_json()["status"] == "cancelled"
    assert ask(client).status_code == 202
    page = client.post("/playground", data={"model_0": "tiny", "prompt": "hi", "max_new_tokens": "8",
                                            "temperature": "0", "seed": "0"})
    assert page.status_code == 429 and "you have 3 playground requests waiting" in page.get_data(as_text=True)


def test_who_may_read_and_cancel(app, client):
    mine = ask(client).get_json()["id"]
    with app.app_context():
        other = sign_in(app.test_client(), make_user("other"))
        admin = sign_in(app.test_client(), make_user("boss", admin=True))
    assert other.get(f"/api/generate/{mine}").get_json()["model"] == "tiny"  # the team reads each other's
    refused = other.post(f"/api/generate/{mine}/cancel")
    assert refused.status_code == 403 and "only your own" in refused.get_json()["error"]
    assert admin.post(f"/api/generate/{mine}/cancel").get_json()["status"] == "cancelled"
    assert client.post(f"/api/generate/{mine}/cancel").status_code == 409  # it has ended
    anonymous = app.test_client()
    assert anonymous.post("/api/generate", json=ASK).status_code == 401
    assert anonymous.get(f"/api/generate/{mine}").status_code == 401
    assert anonymous.get("/playground").status_code in (302, 303)
    history = client.get("/api/generate?model=tiny").get_json()
    assert history["model_key"] == "preset:tiny" and [r["id"] for r in history["requests"]] == [mine]
    assert history["requests"][0]["created_by"] == "tester"


def test_a_worker_answers_keeps_the_model_and_stops_on_cancel(client, worker_env, start_worker):
    first = ask(client, prompts=["what is 2 + 2?", "and 3 + 3?"]).get_json()["id"]
    worker = playground_worker(worker_env, start_worker)
    done = wait_for(lambda: ended(client, first), timeout=180)
    assert done["status"] == "completed", done
    assert [a["index"] for a in done["answers"]] == [0, 1] and done["cold"] is True and done["load_seconds"] > 0
    for answer in done["answers"]:
        assert answer["tokens"] <= 8 and answer["tokens_per_second"] is not None and answer["ttft_seconds"] > 0

    # The same model again: held, not loaded; the greedy answer is the same answer.
    again = ask(client, prompts=["what is 2 + 2?"]).get_json()["id"]
    warm = wait_for(lambda: ended(client, again), timeout=120)
    assert warm["status"] == "completed" and warm["cold"] is False
    assert warm["answers"][0]["text"] == done["answers"][0]["text"]
    assert warm["answers"][0]["ttft_seconds"] < done["answers"][0]["ttft_seconds"]
    assert done["answers"][0]["compiled"] is True and warm["answers"][0]["compiled"] is False

    # Cancel in flight: many long answers asked with new settings (a new compile); cancelled while it works.
    slow = ask(client, prompts=[f"count to {n}" for n in range(8)],
               settings={"max_new_tokens": 512, "temperature": 0.9, "top_p": 0.95, "seed": 1}).get_json()["id"]
    wait_for(lambda: state(client, slow)["status"] == "running", timeout=60)
    servers = processes_mentioning("app.trainer.serve")
    assert servers
    cancelled = client.post(f"/api/generate/{slow}/cancel").get_json()
    assert cancelled["cancel_requested"] is True
    stopped = wait_for(lambda: ended(client, slow), timeout=60)
    assert stopped["status"] == "cancelled" and stopped["error_message"] == "cancelled while answering"
    assert len(stopped["answers"]) < 8
    # The worker still answers: the next request is served (by a new server if the old one was stopped).
    after = ask(client).get_json()["id"]
    assert wait_for(lambda: ended(client, after), timeout=180)["status"] == "completed"
    assert worker.poll() is None


def test_a_request_whose_worker_is_killed_is_answered_by_another(client, worker_env, start_worker):
    asked = ask(client, prompts=["what is 2 + 2?"]).get_json()["id"]
    first = playground_worker(worker_env, start_worker)
    wait_for(lambda: state(client, asked)["status"] == "running", timeout=60)
    os.kill(first.pid, signal.SIGKILL)  # mid-answer: loading the model, or generating
    first.wait()
    # Its server notices that its worker is gone (stdin closed) and ends by itself.
    wait_for(lambda: not [p for p in processes_mentioning("app.trainer.serve") if alive(p)], timeout=120)
    assert state(client, asked)["status"] == "running"  # until a lease expires, nobody knows

    second = playground_worker(worker_env, start_worker, TUNIX_LEASE_TIMEOUT_SECONDS="2")
    answered = wait_for(lambda: ended(client, asked), timeout=180)
    assert answered["status"] == "completed" and answered["attempt"] == 2, answered
    assert len(answered["answers"]) == 1
    assert second.poll() is None

    # Killed on both attempts: it fails, and says why.
    second.kill()
    second.wait()
    twice = ask(client).get_json()["id"]
    for attempt in (1, 2):
        doomed = playground_worker(worker_env, start_worker, TUNIX_LEASE_TIMEOUT_SECONDS="2")
        wait_for(lambda: (lambda row: row["status"] == "running" and row["attempt"] == attempt)(state(client, twice)),
                 timeout=90)
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
    playground_worker(worker_env, start_worker, TUNIX_LEASE_TIMEOUT_SECONDS="2")
    failed = wait_for(lambda: ended(client, twice), timeout=120)
    assert failed["status"] == "failed" and "worker lost while answering" in failed["error_message"]
    assert "on each of its 2 attempts" in failed["error_message"]


def memorised(client, app, name: str, answers: list[str]) -> tuple[str, dict[str, str]]:
    """A real run that learnt four colour codes by heart: its id, and what its evaluation answered for each."""
    colours = ["red", "blue", "green", "black"]
    assert client.post("/api/datasets", json={"name": name, "examples": [
        {"prompt": f"colour code of {c}", "response": f"#### {a}"} for c, a in zip(colours, answers)]}).status_code \
        == 201
    app.config["TRAIN_COMMAND"] = [sys.executable, "-m", "app.trainer"]
    app.config["RUN_TIMEOUT_SECONDS"] = 600.0
    run = client.post("/api/tunix/run?mode=sync", json={
        "dataset_key": f"{name}-v1", "eval_dataset_key": f"{name}-v1", "eval_fraction": 0, "batch_size": 4,
        "max_steps": 150, "num_epochs": 1000, "learning_rate": 0.01, "warmup_steps": 10, "max_seq_length": 32,
        "eval_max_new_tokens": 8}).get_json()
    assert run["status"] == "completed", run["error_message"] or run["stderr_tail"]
    recorded = {e["prompt"]: e["prediction"] for e in client.get(
        f"/api/tunix/runs/{run['run_id']}/evaluation?phase=after").get_json()["examples"]}
    return run["run_id"], recorded


@pytest.mark.trainer
@needs_chromium
def test_the_page_asks_a_preset_and_fine_tunes_side_by_side(app, client, page, live_server, worker_env,
                                                            start_worker):
    """Each fine-tune's greedy answer here is the answer its own evaluation recorded (one sampler path), and no
    model's answer crosses to another: two runs learnt different codes for the same prompts."""
    first, first_recorded = memorised(client, app, "codes", ["17", "42", "8", "95"])
    second, second_recorded = memorised(client, app, "recodes", ["71", "24", "80", "59"])
    assert client.post("/api/models/codes/versions", json={"run_id": first, "alias": "staging"}).status_code == 201
    start_worker(worker_env(TUNIX_HEARTBEAT_SECONDS="0.5"))  # holds two models: the third asked evicts one

    page.goto(f"{live_server}/runs/{first}")
    page.click("text=Try it, beside its base model")
    assert page.input_value("#model_0") == f"runs:/{first}" and page.input_value("#model_1") == "tiny"
    page.fill("#model_2", f"runs:/{second}")
    page.fill("#prompt", "colour code of red")
    page.fill("#max_new_tokens", "8")
    page.click("button[type=submit] >> text=Ask")
    page.wait_for_url(lambda url: "/playground/" in url and "history" not in url)
    # The page polls its answers' fragment until every column has ended, then stops.
    page.wait_for_selector("#playground-answers:not([hx-get])", timeout=240_000)
    columns = page.locator("article.playground-column")
    assert columns.count() == 3
    texts = {}
    for i in range(3):
        column = columns.nth(i)
        assert column.get_attribute("data-status") == "completed", column.inner_text()
        texts[column.get_attribute("data-model")] = column.locator("pre[data-answer='0']").inner_text()
        assert "tokens/s" in column.inner_text() and "first token after" in column.inner_text()
    assert texts[f"runs:/{first}"] == first_recorded["colour code of red"] and "17" in texts[f"runs:/{first}"]
    assert texts[f"runs:/{second}"] == second_recorded["colour code of red"] and "71" in texts[f"runs:/{second}"]
    assert texts["tiny"] not in (texts[f"runs:/{first}"], texts[f"runs:/{second}"])  # the untrained preset

    # Every prompt, asked of whichever model, gets that model's own answer (the server's cache keeps them apart).
    for model, recorded in ((f"runs:/{second}", second_recorded), ("models:/codes@staging", first_recorded)):
        prompts = sorted(recorded)
        asked = client.post("/api/generate", json={"model": model, "prompts": prompts,
                                                   "settings": {"max_new_tokens": 8}}).get_json()["id"]
        done = wait_for(lambda: ended(client, asked), timeout=240)
        assert [a["text"] for a in done["answers"]] == [recorded[p] for p in prompts], model

    # The prompts stay with the model: its history names who asked what, and what it answered.
    page.click(f"article[data-model='runs:/{first}'] >> text=Asked of it before")
    history = page.inner_text("main")
    assert "colour code of red" in history and "tester" in history and "greedy, up to 8 tokens" in history
    api = client.get(f"/api/generate?model=runs:/{first}").get_json()
    assert api["requests"][0]["answers"][0]["text"] == texts[f"runs:/{first}"]
    assert "Asked 1 time in the playground" in client.get(f"/runs/{first}").get_data(as_text=True)
    assert "Asked 1 time in the playground" in client.get("/models/codes/versions/1").get_data(as_text=True)


def test_the_claim_order_prefers_held_models_without_starving_anyone(app, client):
    """Older than the preference window: strictly oldest first. Younger: a model the worker holds first.
    A free device answers the playground first unless a run has waited past the passover, and longer."""
    from sqlalchemy import text

    from app.extensions import db
    from app.queue import generation as generation_queue

    def aged(seconds, model):
        row = ask(client, model=model).get_json()
        db.session.execute(text("UPDATE generation_requests SET created_at = now() - make_interval(secs => :s) "
                                "WHERE id = :id"), {"s": seconds, "id": row["id"]})
        db.session.commit()
        return row["id"]

    old_small, young_tiny, young_small = aged(30, "small"), aged(2, "tiny"), aged(1, "small")
    assert client.get(f"/api/generate/{young_small}").get_json()["wait"]["requests_ahead"] == 2
    order = [str(generation_queue.claim_next("w", ["preset:tiny"], prefer_seconds=10).id) for _ in range(3)]
    assert order == [old_small, young_tiny, young_small]
    assert generation_queue.claim_next("w", [], 10) is None

    run = client.post("/api/tunix/run?mode=async", json={"dataset_key": "arithmetic-v1"}).get_json()["run_id"]
    queued = lambda seconds: (db.session.execute(text(  # noqa: E731
        "UPDATE tunix_runs SET queued_at = now() - make_interval(secs => :s) WHERE id = :id"),
        {"s": seconds, "id": run}), db.session.commit())
    queued(10)
    assert not generation_queue.training_goes_first(capacity=1, passover_seconds=60)  # young: the playground first
    queued(120)
    assert generation_queue.training_goes_first(capacity=1, passover_seconds=60)  # waited past the passover
    waiting_longer = aged(300, "tiny")
    assert not generation_queue.training_goes_first(capacity=1, passover_seconds=60)  # a request waited longer
    assert client.get(f"/api/generate/{waiting_longer}").get_json()["wait"]["runs_ahead"] == 0


def test_training_takes_the_servers_device_and_the_playground_comes_back(client, worker_env, start_worker):
    """One device: an idle server (and its models) makes way for a queued run; the next request loads again."""
    first = ask(client).get_json()["id"]
    worker = playground_worker(worker_env, start_worker)
    assert wait_for(lambda: ended(client, first), timeout=180)["status"] == "completed"
    assert servers_of(worker)
    run = client.post("/api/tunix/run?mode=async", json={"dataset_key": "arithmetic-v1"}).get_json()["run_id"]
    wait_for(lambda: client.get(f"/api/tunix/runs/{run}").get_json()["status"] == "completed", timeout=120)
    assert not servers_of(worker)  # stopped for the run, not started again until asked
    again = ask(client).get_json()["id"]
    answered = wait_for(lambda: ended(client, again), timeout=180)
    assert answered["status"] == "completed" and answered["cold"] is True


def test_a_stopping_worker_hands_its_request_back(client, worker_env, start_worker):
    asked = ask(client).get_json()["id"]
    worker = playground_worker(worker_env, start_worker, TUNIX_WORKER_SHUTDOWN_GRACE_SECONDS="0.5")
    wait_for(lambda: state(client, asked)["status"] == "running", timeout=60)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    row = state(client, asked)
    assert row["status"] == "pending" and row["attempt"] == 0, row
    assert row["error_message"] == "handed back: its worker stopped"
    playground_worker(worker_env, start_worker)
    answered = wait_for(lambda: ended(client, asked), timeout=180)
    assert answered["status"] == "completed" and answered["attempt"] == 1


def test_the_page_says_what_a_request_waits_for(app, client):
    from app.queue import registry

    page = client.post("/playground", data={"model_0": "tiny", "model_1": "small", "prompt": "2 + 2?",
                                            "max_new_tokens": "8", "temperature": "0", "seed": "0"})
    assert page.status_code == 303
    shown = client.get(page.headers["Location"]).get_data(as_text=True)
    assert shown.count("no worker answers the playground now") == 2 and 'hx-get="' in shown
    with app.app_context():
        registry.register("gpu-1:1:ab", "gpu-1", 1, [{"id": 0, "kind": "gpu", "name": "H200", "memory_bytes": 1}])
    for _ in range(2):
        ask(client)
    later = client.post("/playground", data={"model_0": "tiny", "prompt": "3 + 3?", "max_new_tokens": "8",
                                             "temperature": "0", "seed": "0"})
    shown = client.get(later.headers["Location"]).get_data(as_text=True)
    assert "waiting for a free device: 4 requests ahead" in shown
    refused = client.post("/playground", data={"model_0": "runs:/nope", "prompt": " ", "max_new_tokens": "0",
                                               "temperature": "0", "top_p": "0.9", "seed": "0"})
    body = refused.get_data(as_text=True)
    assert refused.status_code == 422
    for field, problem in (("model_0", "no run with id &#39;nope&#39;"), ("prompt", "must be a non-blank string"),
                           ("max_new_tokens", "must be from 1 to 512, got 0"),
                           ("top_p", "applies only when sampling")):
        assert f'id="{field}-error">{problem}' in body, field


def test_the_server_keeps_the_models_it_used_last_within_its_count_and_memory():
    from app.trainer.serve import Loaded, Models

    def model(size):
        return Loaded(model=None, tokenizer=None, format=None, bytes=size)

    held = Models(max_models=2, budget_bytes=100)
    held.put("a", model(30))
    held.put("b", model(30))
    assert held.get("a") is not None  # a is now the most recently used
    assert held.room_for() == ["b"] and held.keys() == ["a"]  # a third would pass the count: b goes
    held.put("c", model(30))
    assert held.room_for(incoming_bytes=50) == ["a"]  # 30 + 30 + 50 > 100: the least recently used goes
    assert held.put("big", model(90)) == ["c"] and held.keys() == ["big"]  # its size, known once loaded
    assert held.put("huge", model(500)) == ["big"] and held.keys() == ["huge"]  # alone, it is still served
    assert Models(max_models=3, budget_bytes=None).room_for(10**12) == []
