"""How long a run should take, and how that figure was made: the sync limit refuses on it, and says why.

Each part is measured on the latest completed runs of the same model where there are some (their
medians), else a nominal figure for the model: start-up and storing (everything not training or
scoring), the steps at the training pace, and the two scoring passes at the generation pace.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import Any

from sqlalchemy import select

from app.contract import training_plan
from app.datasets import store as dataset_store
from app.extensions import db
from app.models import TunixRun
from app import run_states as states

SAMPLE_RUNS = 20
# Nominal figures for a model no completed run has measured yet (bench/first_step.py, bench/evaluation.py).
NOMINAL_STEP_SECONDS = {"tiny": 0.07, "small": 0.3}
NOMINAL_OVERHEAD_SECONDS = {"tiny": 8.0, "small": 15.0}
NOMINAL_TOKEN_SECONDS = {"tiny": 0.0002, "small": 0.001}  # per example and generated token, one pass
OTHER_STEP_SECONDS, OTHER_OVERHEAD_SECONDS, OTHER_TOKEN_SECONDS = 1.0, 60.0, 0.01


@dataclass(frozen=True)
class Estimate:
    """Seconds a run should take, part by part, and how many past runs measured them (0: nominal)."""

    overhead_seconds: float
    steps: int
    step_seconds: float
    scored_examples: int
    new_tokens: int
    token_seconds: float
    measured_runs: int
    model_id: str

    @property
    def scoring_seconds(self) -> float:
        return 2 * self.scored_examples * self.new_tokens * self.token_seconds

    @property
    def total_seconds(self) -> float:
        return self.overhead_seconds + self.steps * self.step_seconds + self.scoring_seconds

    def explain(self) -> str:
        """The figure and how it was made, in a sentence."""
        source = (f"the median of the latest {self.measured_runs} completed runs of {self.model_id}"
                  if self.measured_runs else f"nominal figures for {self.model_id}, since no run of it has "
                                             "completed yet")
        scoring = (f", scoring {self.scored_examples} answers of up to {self.new_tokens} tokens before and after "
                   f"training {self.scoring_seconds:.0f} s") if self.scored_examples else ""
        return (f"about {self.total_seconds:.0f} s: start-up and storing {self.overhead_seconds:.0f} s, "
                f"{self.steps} steps at {self.step_seconds:.3g} s each {self.steps * self.step_seconds:.0f} s"
                f"{scoring} (from {source})")


def _measured(result: Any, duration: float | None, new_tokens: int | None) -> tuple[float, float | None, float] | None:
    """(seconds per step, seconds per example-token of scoring, the rest) of one completed run's result."""
    if not isinstance(result, dict) or not duration:
        return None
    pace, steps = result.get("steps_per_second"), result.get("steps")
    if not isinstance(pace, (int, float)) or pace <= 0 or not isinstance(steps, int) or steps <= 0:
        return None
    evaluation = result.get("evaluation") if isinstance(result.get("evaluation"), dict) else {}
    passes = [evaluation.get(p) for p in ("before", "after") if isinstance(evaluation.get(p), dict)]
    scoring_seconds = sum(float(p.get("seconds") or 0) for p in passes)
    tokens = sum(int(p.get("examples") or 0) for p in passes) * (new_tokens or 0)
    token_seconds = scoring_seconds / tokens if tokens else None
    return 1 / pace, token_seconds, max(0.0, duration - steps / pace - scoring_seconds)


def estimate(config: dict[str, Any]) -> Estimate:
    """How long a run with this config should take, from the runs of its model that completed lately."""
    dataset = dataset_store.get_dataset(config["dataset_key"])
    n = dataset.num_examples
    steps = training_plan.total_steps(config, n - training_plan.eval_count(n, config["eval_fraction"]))
    eval_dataset = dataset_store.get_dataset(config["eval_dataset_key"]) if config.get("eval_dataset_key") else None
    scored = training_plan.scored_count(config, n, eval_dataset.num_examples if eval_dataset else None)
    rows = db.session.execute(
        select(TunixRun.result, TunixRun.duration_seconds, TunixRun.config["eval_max_new_tokens"].as_integer())
        .where(TunixRun.model_id == config["model_id"], TunixRun.status == states.COMPLETED,
               TunixRun.mode != states.DRY_RUN, TunixRun.duration_seconds.is_not(None))
        .order_by(TunixRun.created_at.desc()).limit(SAMPLE_RUNS)).all()
    measured = [m for m in (_measured(result, duration, new_tokens) for result, duration, new_tokens in rows) if m]
    model = config["model_id"]
    token_paces = [m[1] for m in measured if m[1] is not None]
    return Estimate(
        overhead_seconds=median(m[2] for m in measured) if measured else NOMINAL_OVERHEAD_SECONDS.get(
            model, OTHER_OVERHEAD_SECONDS),
        steps=steps,
        step_seconds=median(m[0] for m in measured) if measured else NOMINAL_STEP_SECONDS.get(
            model, OTHER_STEP_SECONDS),
        scored_examples=scored, new_tokens=config["eval_max_new_tokens"],
        token_seconds=median(token_paces) if token_paces else NOMINAL_TOKEN_SECONDS.get(model, OTHER_TOKEN_SECONDS),
        measured_runs=len(measured), model_id=model)
