"""Every page in a real browser, at desktop and phone widths: no serious or critical axe-core violation,
no sideways scrolling of the page, and (with TUNIX_SCREENSHOTS_DIR set, as `make screenshots` does)
a screenshot of each.

The finished runs, their comparison, the leaderboard and the sweep are real: `tiny` trained by Tunix
on the CPU and scored by its sampler, so the pictures in the docs show a real loss curve and real
answers. Only the running run is written into the database, frozen mid-training for its picture."""
import os
import signal
from pathlib import Path

import pytest
from sqlalchemy import text

from app.extensions import db
from app.queue import registry
from tests.helpers import ROOT, SAMPLE, fake_trainer_command, needs_chromium, sign_in_browser, submit, wait_for
from tests.test_trainer import REAL_TRAINER

AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
WIDTHS = {"desktop": 1280, "phone": 390}
SCREENSHOTS = os.environ.get("TUNIX_SCREENSHOTS_DIR")

pytestmark = [needs_chromium, pytest.mark.skipif(not AXE.exists(), reason="axe-core is not installed "
                                                                          "(make test installs it from npm)")]

# Small enough for a CPU in seconds, long enough for a curve and a page of scored answers.
REAL = {"max_steps": 120, "eval_every_n_steps": 20, "eval_max_examples": 24, "eval_max_new_tokens": 24}

RUN_AXE = """async () => {
  const result = await axe.run(document);
  return result.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                      where: v.nodes.slice(0, 3).map(n => n.target.join(' '))}));
}"""


def _run_pages(client, app, worker) -> dict[str, str]:
    """A run in each state a person can meet, by the name its screenshot gets."""
    sweep_pages = _sweep_pages(client, worker)  # first: its worker is gone before the other runs are queued
    runs = {"run-pending": submit(client, name="waiting for a worker")["run_id"]}
    running = submit(client, name="training now", tags=["baseline"])["run_id"]
    db.session.execute(text(
        "UPDATE tunix_runs SET status = 'running', started_at = now(), worker_id = 'gpu-1:4242:ab12cd', attempt = 1, "
        "device_ids = '{0}', progress = CAST(:p AS jsonb) WHERE id = :id"),
        {"id": running, "p": '{"phase": "training", "total_steps": 120, "step": 45, "loss": 2.31, '
                             '"elapsed_seconds": 30.5, "seconds_per_step": 0.45, "tokens_per_second": 18390.0, '
                             '"eval_loss": 2.52, "eval_step": 40}'})
    for step in range(1, 46):
        db.session.execute(text("INSERT INTO run_metrics (run_id, split, step, loss, recorded_at) "
                                "VALUES (:id, 'train', :s, :l, now())"), {"id": running, "s": step, "l": 5.9 / step ** 0.4})
    db.session.commit()
    runs["run-running"] = running
    app.config.update(TRAIN_COMMAND=REAL_TRAINER)
    runs["run-completed"] = submit(client, "sync", name="arithmetic, lr 6e-3", tags=["baseline", "small-lr"],
                                   learning_rate=0.006, **REAL)["run_id"]
    rival = submit(client, "sync", name="arithmetic, lr 2e-3", learning_rate=0.002, batch_size=8, **REAL)["run_id"]
    for run_id in (runs["run-completed"], rival):
        run = client.get(f"/api/tunix/runs/{run_id}").get_json()
        assert run["status"] == "completed", run["error_message"]
    cancelled = submit(client)["run_id"]
    client.post(f"/api/tunix/runs/{cancelled}/cancel")
    runs["run-cancelled"] = cancelled
    app.config.update(TRAIN_COMMAND=fake_trainer_command("--exit-code", "3"))
    runs["run-failed"] = submit(client, "sync")["run_id"]
    runs["run-dry-run"] = submit(client, "dry_run", name="plan before training")["run_id"]
    return {**{name: f"/runs/{run_id}" for name, run_id in runs.items()},
            **_registry_pages(client, app, runs["run-completed"], rival, worker),
            "compare": f"/runs/compare?ids={runs['run-completed']},{rival}",
            "compare-rejected": f"/runs/compare?ids={rival}", "leaderboard": f"/datasets/{SAMPLE}/leaderboard",
            **sweep_pages}


def _registry_pages(client, app, first: str, second: str, worker) -> dict[str, str]:
    """The two real runs registered as versions of a model, with an alias moved twice and a gate."""
    from tests.helpers import make_user, sign_in

    admin = sign_in(app.test_client(), make_user("boss", admin=True))
    for run_id in (first, second):
        assert client.post("/api/models/arithmetic/versions", json={"run_id": run_id}).status_code == 201
    assert client.post("/api/models/arithmetic/gates", json={"metric": "answer_match", "eval_dataset_key": SAMPLE,
                                                             "max_drop": 0.02}).status_code == 201
    for version, reason in ((2, "first to pass the sample set"), (1, "better answers on the sample set")):
        response = admin.put("/api/models/arithmetic/aliases/champion",
                             json={"version": version, "reason": reason, "override": True})
        assert response.status_code == 200, response.get_json()
    # The playground: the form with the run beside its base, the two answers side by side, a model's history.
    asked = client.post("/playground", data={"model_0": f"runs:/{first}", "model_1": "tiny",
                                             "prompt": "What is 12 + 30?", "max_new_tokens": "16",
                                             "temperature": "0", "seed": "0"})
    assert asked.status_code == 303, asked.get_data(as_text=True)
    process = worker()  # answers both (its generation server loads each model)
    answers = asked.headers["Location"] + "/answers"
    wait_for(lambda: "hx-get" not in client.get(answers).get_data(as_text=True), timeout=300, interval=0.5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    return {"models": "/models", "model": "/models/arithmetic", "model-version": "/models/arithmetic/versions/1",
            "register": f"/models/register/{first}", "playground": f"/playground?model=runs:/{first}&model=tiny",
            "playground-answers": asked.headers["Location"], "playground-history": "/playground/history?model=tiny"}


def _sweep_pages(client, worker) -> dict[str, str]:
    """A real sweep of four `tiny` trials, two at a time, run to its end by a worker."""
    created = client.post("/api/sweeps", json={
        "name": "lr and batch search", "base": {"dataset_key": SAMPLE, **REAL, "max_steps": 60,
                                                "eval_max_examples": 8},
        "space": {"learning_rate": {"type": "log_uniform", "low": 1e-3, "high": 2e-2},
                  "batch_size": {"type": "choice", "values": [4, 8]}},
        "objective": {"metric": "final_eval_loss"}, "max_trials": 4, "parallelism": 2, "sampler": "random"}).get_json()
    sweep_id = created["sweep_id"]
    process = worker()
    sweep = wait_for(lambda: (s := client.get(f"/api/sweeps/{sweep_id}").get_json())["status"] != "running" and s,
                     timeout=600, interval=0.5)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert sweep["status"] == "completed" and sweep["best"] is not None, sweep
    return {"sweeps": "/sweeps", "new-sweep": "/sweeps/new", "sweep": f"/sweeps/{sweep_id}"}


def _check(page, name: str, width_name: str) -> list[str]:
    page.add_script_tag(path=str(AXE))
    problems = [f"{name} at {width_name}: {v['impact']} {v['id']} ({v['help']}) at {v['where']}"
                for v in page.evaluate(RUN_AXE) if v["impact"] in ("serious", "critical")]
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    if overflow > 0:
        problems.append(f"{name} at {width_name}: the page scrolls sideways by {overflow} px")
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / f"{name}-{WIDTHS[width_name]}.png"), full_page=True)
    return problems


@pytest.mark.trainer
def test_every_page_is_accessible_and_fits_a_phone(client, app, live_server, browser, credentials, worker_env,
                                                   start_worker):
    pages = {"runs": "/runs", "new-run": "/runs/new",
             **_run_pages(client, app, lambda: start_worker(worker_env(REAL_TRAINER))), "datasets": "/datasets",
             "dataset": f"/datasets/{SAMPLE}", "workers": "/workers", "tokens": "/settings/tokens", "api-help": "/help/api"}
    # A frozen GPU host (the running run's row names it), seen just now: four devices, one busy.
    registry.register("gpu-1:4242:ab12cd", "gpu-1", 4242,
                      [{"id": i, "kind": "gpu", "name": "NVIDIA H200", "memory_bytes": 143771 * 2**20}
                       for i in range(4)],
                      {"python": "3.11.7", "jax": "0.10.2", "jaxlib": "0.10.2", "tunix": "0.1.7", "flax": "0.12.8"})
    problems = []
    for width_name, width in WIDTHS.items():
        # axe is injected as a script of the test's own, which the app's CSP would refuse.
        page = browser.new_page(viewport={"width": width, "height": 900}, bypass_csp=True)
        page.goto(live_server + "/login")
        problems += _check(page, "login", width_name)
        sign_in_browser(page, live_server, credentials)
        for name, path in pages.items():
            page.goto(live_server + path)
            problems += _check(page, name, width_name)
        page.goto(live_server + "/sweeps/new")
        page.fill("input[name='space.learning_rate.high']", "3")
        page.click("button[type=submit] >> text=Start sweep")
        page.wait_for_selector("#error-summary")
        problems += _check(page, "new-sweep-rejected", width_name)
        page.goto(live_server + "/playground?model=tiny")
        page.fill("#max_new_tokens", "many")
        page.click("button[type=submit] >> text=Ask")
        page.wait_for_selector("#error-summary")
        problems += _check(page, "playground-rejected", width_name)
        page.goto(live_server + "/runs/new")
        page.fill("#learning_rate", "fast")
        page.click("button[type=submit] >> text=Start run")
        page.wait_for_selector("#error-summary")
        assert page.evaluate("document.activeElement.id") == "error-summary", "focus goes to the error summary"
        problems += _check(page, "new-run-rejected", width_name)
        page.close()
    assert problems == [], "\n".join(problems)
