"""Sweeps: create, advance, prune, cancel. No daemon of its own.

A sweep moves forward in `advance`, called by the worker that just finished one of its trials
and by every worker's housekeeping. `advance` holds the sweep's row (SELECT ... FOR UPDATE)
for its whole transaction: it tells the study how each ended trial did, then, while the budget
and the parallelism allow, asks for the next configuration and queues it as an ordinary async
run, in that same transaction. Two processes therefore never advance one sweep at once, and a
trial is queued exactly when its number is counted.
"""
from __future__ import annotations

import logging
import math
import uuid
from typing import Any

from flask import current_app
from sqlalchemy import func, select, update

from app.contract import model_refs
from app.datasets import store as dataset_store
from app.errors import ConflictError, ForbiddenError, ValidationError, echo
from app.extensions import db
from app.models import (SWEEP_CANCELLED, SWEEP_COMPLETED, SWEEP_FAILED, SWEEP_RUNNING, TRIAL_COMPLETE, TRIAL_FAILED,
                        TRIAL_PRUNED, TRIAL_RUNNING, Sweep, SweepTrial, TunixRun)
from app.registry import service as registry
from app.runs import lifecycle, service as run_service
from app.runs.lifecycle import event_time
from app.run_states import ACTIVE_STATUSES, COMPLETED, PENDING, RUNNING
from app.sweeps import spec as sweep_spec
from app.sweeps import study

log = logging.getLogger(__name__)

NAME_IN_TRIAL = 100  # characters of the sweep's name kept in its trials' names ("<name> #12")


def study_config(sweep: Sweep) -> study.StudyConfig:
    return study.StudyConfig(str(sweep.id), sweep.direction, sweep.space, sweep.sampler, sweep.pruner,
                             int(sweep.base.get("seed") or 0))


def create_sweep(raw: Any, actor) -> Sweep:
    """Validate, create the study, store the sweep and queue its first trials."""
    settings = current_app.config
    cap = settings["MAX_ACTIVE_RUNS_PER_USER"] or sweep_spec.MAX_PARALLELISM
    spec = sweep_spec.validate_sweep(raw, model_roots=run_service.model_roots(settings),
                                     max_parallelism=min(cap, sweep_spec.MAX_PARALLELISM))
    problems = {f"base.{key}": f"unknown dataset {echo(spec.base[key])}" for key in ("dataset_key", "eval_dataset_key")
                if spec.base.get(key) and dataset_store.get_dataset(spec.base[key]) is None}
    base_model = spec.base.get("model_id") or ""
    if model_refs.is_model_ref(base_model):
        # Every trial trains from one version: an alias is fixed now, not at each trial's queueing.
        try:
            spec.base["model_id"] = registry.resolve(base_model).version.ref
        except ValidationError as exc:
            problems.update({f"base.{k}": v for k, v in exc.details.items()})
    if problems:
        raise ValidationError(sweep_spec.INVALID_SWEEP, problems)
    _check_sweep_limits(actor.user_id, settings)
    sweep = Sweep(id=uuid.uuid4(), name=spec.name, status=SWEEP_RUNNING, base=spec.base, space=spec.space,
                  objective_metric=spec.objective_metric, direction=spec.direction, max_trials=spec.max_trials,
                  parallelism=spec.parallelism, sampler=spec.sampler, pruner=spec.pruner, trials_asked=0,
                  created_by=actor.user_id, created_at=event_time())
    study.create(study_config(sweep))
    db.session.add(sweep)
    db.session.commit()
    log.info("sweep %s created: %d trials, %d at a time, %s on %s", sweep.id, sweep.max_trials,
             sweep.parallelism, sweep.sampler, sweep.objective_metric)
    try:
        advance(sweep.id)
    except Exception:  # the sweep exists: the workers' housekeeping queues its first trials instead
        db.session.rollback()
        log.exception("sweep %s: queuing its first trials failed; the workers will retry", sweep.id)
    return db.session.get(Sweep, sweep.id)


def _check_sweep_limits(user_id: int | None, settings) -> None:
    """A user may run only so many sweeps at once, and a new one needs room for at least one trial. The
    user's lock (taken by room_for_runs) is held until the sweep is stored, so two cannot both pass."""
    if user_id is None:
        return
    room = run_service.room_for_runs(user_id)
    most = settings["MAX_ACTIVE_SWEEPS_PER_USER"]
    running = db.session.scalar(select(func.count()).select_from(Sweep).where(
        Sweep.created_by == user_id, Sweep.status == SWEEP_RUNNING))
    if most and running >= most:
        raise run_service.TooManyActiveRuns(f"you have {running} running sweeps, the most one user may have",
                                            {"sweeps": f"at most {most} running at once; wait for one to end "
                                                       "or cancel one"})
    if room == 0:
        cap = settings["MAX_ACTIVE_RUNS_PER_USER"]
        raise run_service.TooManyActiveRuns(f"you have {cap} active runs, the most one user may have",
                                            {"runs": f"at most {cap} pending or running at once, a sweep's trials "
                                                     "included; wait for one to end or cancel one"})


def objective_value(metric: str, run: TunixRun) -> float | None:
    """The sweep's objective as this run scored it; None when the run did not report it."""
    if metric in ("final_loss", "final_eval_loss", "answer_match", "exact_match"):
        value = getattr(run, metric)
    else:
        value = (run.result or {}).get(metric) if isinstance(run.result, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _outcome(sweep: Sweep, trial: SweepTrial, run: TunixRun | None) -> tuple[str, float | None, str | None]:
    """How an ended trial is told to the study: (state, value, note)."""
    if run is None:
        return TRIAL_FAILED, None, "its run was deleted"
    if trial.pruned_at_step is not None:
        return TRIAL_PRUNED, None, f"pruned at step {trial.pruned_at_step}"
    if run.status != COMPLETED:
        return TRIAL_FAILED, None, f"its run ended {run.status}"
    value = objective_value(sweep.objective_metric, run)
    if value is None:
        return TRIAL_FAILED, None, f"its run reported no {sweep.objective_metric}"
    return TRIAL_COMPLETE, value, None


def _trial_name(sweep: Sweep, number: int) -> str:
    return f"{sweep.name[:NAME_IN_TRIAL]} #{number}"


def advance(sweep_id: uuid.UUID) -> None:
    """Tell the study about ended trials, queue the next ones the budget allows, end the sweep when done."""
    sweep = db.session.execute(select(Sweep).where(Sweep.id == sweep_id).with_for_update(of=Sweep)
                               .execution_options(populate_existing=True)).scalar_one_or_none()
    if sweep is None or sweep.status != SWEEP_RUNNING:
        db.session.rollback()
        return
    config = study_config(sweep)
    trials = list(db.session.scalars(select(SweepTrial).where(SweepTrial.sweep_id == sweep.id)
                                     .order_by(SweepTrial.number).execution_options(populate_existing=True)))
    for trial in trials:
        if trial.state != TRIAL_RUNNING:
            continue
        run = db.session.execute(select(TunixRun).where(TunixRun.id == trial.run_id)
                                 .execution_options(populate_existing=True)).scalar_one_or_none() \
            if trial.run_id else None
        if run is not None and run.status in ACTIVE_STATUSES:
            continue
        state, value, note = _outcome(sweep, trial, run)
        study.tell(config, trial.study_trial_id, state, value)
        trial.state, trial.value, trial.note, trial.told_at = state, value, note, event_time()
        log.info("sweep %s: trial %d %s%s", sweep.id, trial.number, state,
                 f" ({sweep.objective_metric} {value:.6g})" if value is not None else f" ({note})")
    active = sum(1 for t in trials if t.state == TRIAL_RUNNING)
    # Trials are runs of the sweep's owner: they take room under the owner's limit like any run, and
    # the sweep waits for room (the workers' housekeeping advances it again) rather than go past it.
    room = run_service.room_for_runs(sweep.created_by) if active < sweep.parallelism else 0
    while sweep.trials_asked < sweep.max_trials and active < sweep.parallelism and room > 0:
        number = sweep.trials_asked + 1
        asked = study.ask(config, number)
        trial = SweepTrial(sweep_id=sweep.id, number=number, study_trial_id=asked.trial_id, params=asked.params,
                           asked_at=event_time())
        try:
            trial.run_id = run_service.queue_trial(
                {**sweep.base, **asked.params, "name": _trial_name(sweep, number)}, sweep.created_by, sweep.id,
                number)
            trial.state = TRIAL_RUNNING
            active += 1
            room -= 1
        except ValidationError as exc:  # a combination the run's own checks refuse (e.g. warmup past max_steps)
            study.tell(config, asked.trial_id, TRIAL_FAILED)
            trial.state, trial.told_at = TRIAL_FAILED, event_time()
            trial.note = "refused: " + "; ".join(f"{k} {v}" for k, v in exc.details.items())[:500]
        db.session.add(trial)
        trials.append(trial)
        sweep.trials_asked = number
    _settle_best(sweep, trials)
    if sweep.trials_asked >= sweep.max_trials and active == 0:
        sweep.status = SWEEP_COMPLETED if any(t.state == TRIAL_COMPLETE for t in trials) else SWEEP_FAILED
        sweep.completed_at = event_time()
        if sweep.status == SWEEP_FAILED:
            sweep.error_message = "no trial completed with a value for the objective"
        log.info("sweep %s: %s after %d trials", sweep.id, sweep.status, sweep.trials_asked)
    db.session.commit()


def _settle_best(sweep: Sweep, trials: list[SweepTrial]) -> None:
    done = [t for t in trials if t.state == TRIAL_COMPLETE and t.value is not None]
    if not done:
        return
    sign = 1 if sweep.direction == "minimize" else -1
    best = min(done, key=lambda t: (sign * t.value, t.number))
    sweep.best_trial_number, sweep.best_value = best.number, best.value


def advance_running(limit: int = 50) -> int:
    """Advance every running sweep (the workers' housekeeping); how many were looked at."""
    ids = list(db.session.scalars(select(Sweep.id).where(Sweep.status == SWEEP_RUNNING)
                                  .order_by(Sweep.created_at).limit(limit)))
    db.session.rollback()
    for sweep_id in ids:
        try:
            advance(sweep_id)
        except ValidationError:
            db.session.rollback()
    return len(ids)


def cancel_sweep(sweep: Sweep, actor) -> Sweep:
    """Stop asking, cancel the pending trials and stop the running ones."""
    if not actor.may_change(sweep.created_by):
        raise ForbiddenError("only the sweep's owner or an admin may cancel it")
    changed = db.session.execute(update(Sweep).where(Sweep.id == sweep.id, Sweep.status == SWEEP_RUNNING)
                                 .values(status=SWEEP_CANCELLED, completed_at=event_time())).rowcount
    db.session.commit()
    if not changed:
        db.session.refresh(sweep)
        raise ConflictError(f"the sweep is already {sweep.status}")
    # After the status is committed no advance queues another trial: the runs left are all there is.
    for run in db.session.scalars(select(TunixRun).where(TunixRun.sweep_id == sweep.id,
                                                         TunixRun.status.in_((PENDING, RUNNING)))).all():
        try:
            run_service.cancel_run(run, actor)
        except ConflictError:  # it ended meanwhile
            pass
    db.session.refresh(sweep)
    log.info("sweep %s cancelled", sweep.id)
    return sweep


class TrialReporter:
    """In the worker running a trial: report each eval loss to the study, and stop the run when pruned."""

    def __init__(self, run_id: uuid.UUID, sweep_id: uuid.UUID):
        self.run_id, self.sweep_id = run_id, sweep_id
        self._config: study.StudyConfig | None = None
        self._trial: tuple[int, int] | None = None  # (number, study trial id)
        self.pruned = False

    def _load(self) -> bool:
        if self._trial is None:
            row = db.session.execute(select(Sweep, SweepTrial).join(SweepTrial, SweepTrial.sweep_id == Sweep.id)
                                     .where(SweepTrial.run_id == self.run_id)).first()
            db.session.rollback()
            if row is None or row.Sweep.pruner == "none" or row.Sweep.status != SWEEP_RUNNING:
                return False
            self._config = study_config(row.Sweep)
            self._trial = (row.SweepTrial.number, row.SweepTrial.study_trial_id)
        return True

    def on_event(self, event: dict[str, Any]) -> None:
        if self.pruned or event.get("event") != "eval" or not self._load():
            return
        step, loss = event.get("step"), event.get("loss")
        if not isinstance(step, int) or isinstance(loss, bool) or not isinstance(loss, (int, float)) \
                or not math.isfinite(loss):
            return
        if not study.report(self._config, self._trial[1], step, float(loss)):
            return
        self.pruned = True
        db.session.execute(update(SweepTrial).where(SweepTrial.run_id == self.run_id,
                                                    SweepTrial.state == TRIAL_RUNNING)
                           .values(pruned_at_step=step))
        db.session.commit()
        stopped = lifecycle.cancel(self.run_id, RUNNING)
        log.info("sweep %s: trial %d pruned at step %d (eval loss %.4g)%s", self.sweep_id, self._trial[0], step,
                 loss, "" if stopped else "; its run had already moved on")

