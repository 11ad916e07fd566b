"""Optuna, kept behind a narrow door: one study per sweep, in Optuna's RDB storage in our Postgres.

Optuna's tables live in the "optuna" schema (created by our migration): in our own schema its
storage would take our Alembic `alembic_version` table for its own and refuse to start. Samplers
hold no state between calls here (each ask may come from another process), so each ask seeds
its sampler with the sweep's seed plus the trial's number: reproducible, and never the same draw twice.
"""
from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass
from typing import Any

from flask import current_app

from app.extensions import db

OPTUNA_SCHEMA = "optuna"
MEDIAN_STARTUP_TRIALS = 3  # trials that must finish before the median pruner stops any
_storages: dict[str, Any] = {}
_lock = threading.Lock()


def _optuna():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def storage():
    """This process's RDBStorage for the app's database (built once; it creates Optuna's tables once)."""
    url = current_app.config["SQLALCHEMY_DATABASE_URI"]
    with _lock:
        if url not in _storages:
            optuna = _optuna()
            # Two processes creating Optuna's tables at once would collide: one at a time, by an
            # advisory lock held on a connection of our own while the storage is built.
            with db.engine.connect() as connection:
                key = zlib.crc32(b"tunix-rt optuna storage")
                connection.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
                try:
                    rdb = optuna.storages.RDBStorage(
                        # No ping before each use: Optuna checks a connection out for every call, and the
                        # ping was a third of its statements. A connection lost to a database restart
                        # fails one advance, which the workers' housekeeping retries.
                        url, engine_kwargs={"connect_args": {"options": f"-csearch_path={OPTUNA_SCHEMA}"},
                                            "pool_pre_ping": False})
                    # Kept for the life of the process: Optuna's cache of finished trials then spares
                    # each ask a read of the study's whole history.
                    _storages[url] = optuna.storages.get_storage(rdb)
                finally:
                    connection.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
        return _storages[url]


def distributions(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Optuna's distribution for each searched hyperparameter."""
    optuna = _optuna()
    found = {}
    for name, param in space.items():
        if param["type"] == "choice":
            found[name] = optuna.distributions.CategoricalDistribution(param["values"])
        elif param["type"] == "int":
            found[name] = optuna.distributions.IntDistribution(param["low"], param["high"], step=param["step"])
        else:
            found[name] = optuna.distributions.FloatDistribution(param["low"], param["high"],
                                                                 log=param["type"] == "log_uniform")
    return found


@dataclass(frozen=True)
class StudyConfig:
    """What it takes to open a sweep's study in any process."""

    name: str
    direction: str
    space: dict[str, dict[str, Any]]
    sampler: str
    pruner: str
    seed: int


def _sampler(config: StudyConfig, draw: int):
    optuna = _optuna()
    seed = config.seed + draw
    if config.sampler == "grid":
        # The grid's order is fixed by the sweep's seed; which points are taken is read from the storage.
        return optuna.samplers.GridSampler({k: p["values"] for k, p in config.space.items()}, seed=config.seed)
    if config.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(config: StudyConfig):
    optuna = _optuna()
    if config.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS)
    return optuna.pruners.NopPruner()


def create(config: StudyConfig) -> None:
    """Create the sweep's study (once, when the sweep is created)."""
    _optuna().create_study(storage=storage(), study_name=config.name, direction=config.direction,
                           sampler=_sampler(config, 0), pruner=_pruner(config))


def _load(config: StudyConfig, draw: int = 0):
    return _optuna().load_study(study_name=config.name, storage=storage(), sampler=_sampler(config, draw),
                                pruner=_pruner(config))


@dataclass(frozen=True)
class Asked:
    trial_id: int
    params: dict[str, Any]


def ask(config: StudyConfig, draw: int) -> Asked:
    """The next configuration the study wants tried."""
    trial = _load(config, draw).ask(distributions(config.space))
    return Asked(trial._trial_id, dict(trial.params))


def tell(config: StudyConfig, trial_id: int, state: str, value: float | None = None) -> None:
    """Report how a trial ended: "complete" with its value, "pruned" or "failed". Telling twice is harmless."""
    optuna = _optuna()
    study = _load(config)
    frozen = study._storage.get_trial(trial_id)
    if frozen.state.is_finished():
        return  # told before, by a process that then could not record it
    states = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED,
              "failed": optuna.trial.TrialState.FAIL}
    study.tell(frozen.number, value if state == "complete" else None, state=states[state])


def report(config: StudyConfig, trial_id: int, step: int, value: float) -> bool:
    """Record an intermediate value of a running trial; True when the pruner says to stop it."""
    optuna = _optuna()
    study = _load(config)
    trial = optuna.trial.Trial(study, trial_id)
    if trial._cached_frozen_trial.state.is_finished():
        return False
    if step in trial._cached_frozen_trial.intermediate_values:
        return False  # a resumed trial reports its steps again
    trial.report(value, step)
    return trial.should_prune()
