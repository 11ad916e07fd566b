"""What the API and the pages both look up from a URL: a run, a dataset, a whole-number argument."""
from __future__ import annotations

from flask import current_app, request

from app.datasets import store as dataset_store
from app.datasets.parsing import UploadLimits
from app.errors import NotFoundError, ValidationError
from app.models import Dataset, Sweep, TunixRun
from app.runs import queries
from app.sweeps import queries as sweep_queries


def run_or_404(run_id: str) -> TunixRun:
    """The run a URL names; NotFoundError (404) for an unknown or malformed id."""
    run = queries.get_run(run_id)
    if run is None:
        raise NotFoundError(f"no run with id {run_id!r}")
    return run


def sweep_or_404(sweep_id: str) -> Sweep:
    """The sweep a URL names; NotFoundError (404) for an unknown or malformed id."""
    sweep = sweep_queries.get_sweep(sweep_id)
    if sweep is None:
        raise NotFoundError(f"no sweep with id {sweep_id!r}")
    return sweep


def dataset_or_404(key: str) -> Dataset:
    """The dataset a URL names; NotFoundError (404) when there is none."""
    dataset = dataset_store.get_dataset(key)
    if dataset is None:
        raise NotFoundError(f"no dataset with key {key!r}")
    return dataset


def upload_limits() -> UploadLimits:
    """How much one dataset upload may hold, from the settings."""
    return UploadLimits(current_app.config["DATASET_MAX_EXAMPLES"], current_app.config["DATASET_MAX_EXAMPLE_BYTES"])


# No number a client sends reaches SQL above this: a bigint parameter past 2**63 would be a 500.
MAX_QUERY_NUMBER = 2**31 - 1


def whole_number_arg(name: str, minimum: int, maximum: int = MAX_QUERY_NUMBER,
                     default: int | None = None) -> int | None:
    """A whole-number query argument within bounds; ValidationError (422) naming it otherwise."""
    raw = request.args.get(name)
    if raw is None:
        return default
    bounds = f"from {minimum} to {maximum:,}"
    try:
        value = int(raw) if len(raw) <= 20 else None
    except ValueError:
        value = None
    if value is None or value < minimum or value > maximum:
        raise ValidationError("invalid query", {name: f"must be a whole number {bounds}"})
    return value
