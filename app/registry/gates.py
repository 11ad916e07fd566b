"""Regression gates: rules a registered model sets for the runs that compete for it, and their verdicts.

A gate reads one metric of the candidate run, scored on the gate's evaluation dataset, and passes when
- the value is no worse than the gate's floor (a ceiling when lower is better), and
- against the version behind the gate's baseline alias (champion by default), it is worse by no more than
  the drop allowed (absolute, or relative to the baseline's value) plus a noise allowance.

The noise allowance is what the sample sizes cannot resolve. For a match rate (answer_match,
exact_match: a proportion of n examples) it is z·sqrt(p(1−p)·(1/n_c + 1/n_b)), p the pooled rate
(p_c·n_c + p_b·n_b)/(n_c + n_b), z the gate's confidence (1.96 by default, about 95 %): the two-proportion
test's margin. Other metrics (a loss) record no per-example spread, so their allowance is 0.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select

from app import instruments
from app.accounts.service import Actor
from app.datasets import store as dataset_store
from app.errors import NotFoundError, ValidationError, echo
from app.extensions import db
from app.models import (DROP_ABSOLUTE, DROP_RELATIVE, GATE_HIGHER, GATE_LOWER, GateVerdict, ModelAlias, ModelGate,
                        ModelVersion, RegisteredModel, TunixRun, utcnow)
from app.registry.rules import check_alias, check_owner, scores_of
from app.run_states import COMPLETED

# Metrics whose direction is known; any other numeric score of the evaluation needs one stated.
KNOWN_METRICS = {"answer_match": GATE_HIGHER, "exact_match": GATE_HIGHER, "final_eval_loss": GATE_LOWER,
                 "final_loss": GATE_LOWER}
PROPORTIONS = frozenset({"answer_match", "exact_match"})
METRIC_PATTERN_MAX = 64
GATE_FIELDS = frozenset({"metric", "direction", "eval_dataset_key", "floor", "max_drop", "drop_kind", "baseline_alias",
                         "confidence_z"})
MAX_GATES = 20


def gates_of(model: RegisteredModel) -> list[ModelGate]:
    return list(db.session.scalars(select(ModelGate).where(ModelGate.model_id == model.id).order_by(ModelGate.id)))


def _number(raw: dict, field: str, *, minimum: float | None = None) -> float | None:
    value = raw.get(field)
    if value is None or value == "":
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        raise ValueError(f"must be a number{'' if minimum is None else f' of at least {minimum:g}'}")
    return number


def add_gate(model: RegisteredModel, raw: Any, actor: Actor) -> ModelGate:
    """A new gate from the API's or the form's fields; ValidationError names every bad one."""
    check_owner(model, actor, "set its gates")
    if not isinstance(raw, dict):
        raise ValidationError("invalid gate", {"body": "must be a JSON object"})
    errors: dict[str, str] = {}
    errors.update({key: "unknown field" for key in sorted(set(raw) - GATE_FIELDS)})
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric.strip() or len(metric) > METRIC_PATTERN_MAX \
            or not metric.replace("_", "").isalnum():
        errors["metric"] = (f"name a score: {', '.join(KNOWN_METRICS)}, or any number the evaluation records "
                            "(letters, digits and '_')")
        metric = None
    else:
        metric = metric.strip()
    direction = raw.get("direction") or (KNOWN_METRICS.get(metric) if metric else None)
    if direction not in (GATE_HIGHER, GATE_LOWER):
        errors["direction"] = (f"must be {GATE_HIGHER} or {GATE_LOWER}" if raw.get("direction") else
                               f"is required for {echo(metric)}: say whether {GATE_HIGHER} or {GATE_LOWER} is better")
    dataset_key = raw.get("eval_dataset_key")
    if not isinstance(dataset_key, str) or not dataset_key.strip():
        errors["eval_dataset_key"] = "is required: the dataset the candidate and the baseline are scored on"
    elif dataset_store.get_dataset(dataset_key.strip()) is None:
        errors["eval_dataset_key"] = f"unknown dataset {echo(dataset_key)}"
    values: dict[str, float | None] = {}
    for field, minimum in (("floor", None), ("max_drop", 0.0), ("confidence_z", 0.0)):
        try:
            values[field] = _number(raw, field, minimum=minimum)
        except ValueError as exc:
            errors[field] = str(exc)
    if "floor" not in errors and "max_drop" not in errors and values["floor"] is None and values["max_drop"] is None:
        errors["floor"] = "set a floor, a max_drop, or both"
    drop_kind = raw.get("drop_kind") or DROP_ABSOLUTE
    if drop_kind not in (DROP_ABSOLUTE, DROP_RELATIVE):
        errors["drop_kind"] = f"must be {DROP_ABSOLUTE} or {DROP_RELATIVE}"
    baseline = raw.get("baseline_alias") or "champion"
    try:
        baseline = check_alias(baseline, "baseline_alias")
    except ValidationError as exc:
        errors.update(exc.details)
    if len(gates_of(model)) >= MAX_GATES:
        errors["metric"] = f"a model has at most {MAX_GATES} gates"
    if errors:
        raise ValidationError("invalid gate", errors)
    gate = ModelGate(model_id=model.id, metric=metric, direction=direction, eval_dataset_key=dataset_key.strip(),
                     floor=values["floor"], max_drop=values["max_drop"], drop_kind=drop_kind,
                     baseline_alias=baseline,
                     confidence_z=1.96 if values["confidence_z"] is None else values["confidence_z"],
                     created_by=actor.user_id)
    db.session.add(gate)
    db.session.commit()
    return gate


def gate_or_404(model: RegisteredModel, gate_id: Any) -> ModelGate:
    gate = db.session.get(ModelGate, int(gate_id)) if str(gate_id).isdecimal() and len(str(gate_id)) < 10 else None
    if gate is None or gate.model_id != model.id:
        raise NotFoundError(f"{model.name} has no gate {str(gate_id)[:20]!r}")
    return gate


def delete_gate(model: RegisteredModel, gate: ModelGate, actor: Actor) -> None:
    check_owner(model, actor, "remove its gates")
    db.session.delete(gate)
    db.session.commit()


def describe(gate: ModelGate) -> str:
    """A gate in words, as pages and the CLI show it."""
    better = "higher" if gate.direction == GATE_HIGHER else "lower"
    parts = [f"{gate.metric} on {gate.eval_dataset_key} ({better} is better)"]
    if gate.floor is not None:
        parts.append(f"{'at least' if gate.direction == GATE_HIGHER else 'at most'} {gate.floor:g}")
    if gate.max_drop is not None:
        drop = f"{gate.max_drop:g}" if gate.drop_kind == DROP_ABSOLUTE else f"{gate.max_drop * 100:g} %"
        parts.append(f"worse than @{gate.baseline_alias} by at most {drop} plus the noise allowance (z={gate.confidence_z:g})")
    return "; ".join(parts)


def descriptions(gate_ids: list[int]) -> dict[int, str]:
    """Gates in words, by id."""
    if not gate_ids:
        return {}
    return {g.id: describe(g) for g in db.session.scalars(select(ModelGate).where(ModelGate.id.in_(gate_ids)))}


def _value(scores: dict[str, Any], metric: str) -> float | None:
    value = scores.get(metric)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def noise_allowance(metric: str, candidate: float, n_c: int | None, baseline: float, n_b: int | None,
                    z: float) -> float:
    """The difference the two sample sizes cannot resolve (the module's docstring has the formula)."""
    if metric not in PROPORTIONS or not n_c or not n_b:
        return 0.0
    pooled = (candidate * n_c + baseline * n_b) / (n_c + n_b)
    return z * math.sqrt(max(0.0, pooled * (1 - pooled)) * (1 / n_c + 1 / n_b))


@dataclass
class Judgement:
    candidate_value: float | None
    baseline_number: int | None
    baseline_value: float | None
    delta: float | None
    allowance: float | None
    passed: bool
    reason: str


def judge_scores(gate: ModelGate, scores: dict[str, Any], baseline: ModelVersion | None) -> Judgement:
    """What a gate says of a candidate's scores, against the version behind its alias (if any)."""
    higher = gate.direction == GATE_HIGHER
    value = _value(scores, gate.metric)
    if scores.get("evaluated_on") != gate.eval_dataset_key:
        return Judgement(value, None, None, None, None, False,
                         f"the run was scored on {scores.get('evaluated_on') or 'nothing'}, not on "
                         f"{gate.eval_dataset_key}: it cannot be judged (set eval_dataset_key)")
    if value is None:
        return Judgement(None, None, None, None, None, False, f"the run recorded no {gate.metric}")
    reasons = []
    passed = True
    if gate.floor is not None:
        ok = value >= gate.floor if higher else value <= gate.floor
        passed &= ok
        reasons.append(f"{gate.metric} {value:.4g} is {'within' if ok else 'past'} the "
                       f"{'floor' if higher else 'ceiling'} {gate.floor:g}")
    if gate.max_drop is None:
        return Judgement(value, None, None, None, None, passed, "; ".join(reasons))
    if baseline is None:
        reasons.append(f"no version is @{gate.baseline_alias} yet, so nothing to drop from")
        return Judgement(value, None, None, None, None, passed, "; ".join(reasons))
    base_value = _value(baseline.scores, gate.metric)
    if baseline.scores.get("evaluated_on") != gate.eval_dataset_key or base_value is None:
        reasons.append(f"version {baseline.number} (@{gate.baseline_alias}) has no {gate.metric} on "
                       f"{gate.eval_dataset_key} to compare with")
        return Judgement(value, baseline.number, base_value, None, None, False, "; ".join(reasons))
    delta = value - base_value
    drop = -delta if higher else delta  # how much worse: positive is a regression
    allowed = gate.max_drop if gate.drop_kind == DROP_ABSOLUTE else gate.max_drop * abs(base_value)
    allowance = noise_allowance(gate.metric, value, scores.get("examples"), base_value,
                                baseline.scores.get("examples"), gate.confidence_z)
    ok = drop <= allowed + allowance + 1e-12
    passed &= ok
    reasons.append(f"{'worse' if drop > 0 else 'no worse'} than version {baseline.number} (@{gate.baseline_alias}, "
                   f"{base_value:.4g}) by {max(drop, 0):.4g}: {'within' if ok else 'more than'} the {allowed:.4g} "
                   f"allowed plus {allowance:.4g} of noise")
    return Judgement(value, baseline.number, base_value, delta, allowance, passed, "; ".join(reasons))


def _baseline(gate: ModelGate) -> ModelVersion | None:
    row = db.session.get(ModelAlias, (gate.model_id, gate.baseline_alias))
    return row.version if row is not None else None


def candidate_for(run: TunixRun) -> str | None:
    """The registered model a run competes for, if it names one."""
    return run.config.get("candidate_for") if isinstance(run.config, dict) else None


def judge_run(run: TunixRun) -> list[GateVerdict]:
    """Judge a completed candidate by every gate of the model it names, storing the verdicts (again)."""
    name = candidate_for(run)
    model = db.session.scalar(select(RegisteredModel).where(RegisteredModel.name == name)) if name else None
    if model is None or run.status != COMPLETED:
        return []
    model_gates = gates_of(model)
    if not model_gates:  # nothing to judge, nothing to write (a page asks again on every view)
        return []
    scores = scores_of(run)
    db.session.execute(delete(GateVerdict).where(GateVerdict.run_id == run.id))
    verdicts = []
    for gate in model_gates:
        judgement = judge_scores(gate, scores, _baseline(gate))
        verdicts.append(GateVerdict(run_id=run.id, gate_id=gate.id, metric=gate.metric, judged_at=utcnow(),
                                    **judgement.__dict__))
    db.session.add_all(verdicts)
    db.session.commit()
    for verdict in verdicts:
        instruments.GATE_VERDICTS.labels(result="passed" if verdict.passed else "failed").inc()
    return verdicts


def verdicts_of(run: TunixRun) -> list[GateVerdict]:
    """The run's stored verdicts; a completed candidate judged by no one yet (its worker ended first) is judged
    now."""
    found = list(db.session.scalars(select(GateVerdict).where(GateVerdict.run_id == run.id)
                                    .order_by(GateVerdict.gate_id)))
    if not found and run.status == COMPLETED and candidate_for(run):
        return judge_run(run)
    return found


@dataclass(frozen=True)
class Unpassed:
    gate_id: int
    why: str


def unpassed(model: RegisteredModel, version: ModelVersion) -> list[Unpassed]:
    """The model's gates the version's run has not passed (judged failing, or never judged)."""
    gates = gates_of(model)
    if not gates:
        return []
    run = db.session.get(TunixRun, version.source_run_id) if version.source_run_id else None
    verdicts = {v.gate_id: v for v in verdicts_of(run)} if run is not None else {}
    found = []
    for gate in gates:
        verdict = verdicts.get(gate.id)
        if verdict is None:
            found.append(Unpassed(gate.id, f"{describe(gate)}: its run was never judged by this gate "
                                           f"(it was not submitted with candidate_for {model.name})"))
        elif not verdict.passed:
            found.append(Unpassed(gate.id, f"{describe(gate)}: failed ({verdict.reason})"))
    return found


def check_candidate(config: dict[str, Any]) -> dict[str, str]:
    """Problems with a submission's candidate_for: the model must exist, and the run must be scored where its
    gates look."""
    name = config.get("candidate_for")
    if not name:
        return {}
    model = db.session.scalar(select(RegisteredModel).where(RegisteredModel.name == name))
    if model is None:
        return {"candidate_for": f"no registered model named {echo(name)}"}
    scored_on = config.get("eval_dataset_key") or config.get("dataset_key")
    wanted = sorted({g.eval_dataset_key for g in gates_of(model)})
    if len(wanted) > 1:
        return {"candidate_for": f"the gates of {name} score on several datasets ({', '.join(wanted)}); "
                                 "a run is scored on one"}
    if wanted and scored_on != wanted[0]:
        return {"eval_dataset_key": f"the gates of {name} score on {wanted[0]}: set eval_dataset_key to it"}
    if not config.get("eval_max_examples") and wanted:
        return {"eval_max_examples": f"must be above 0: the gates of {name} judge the run's scores"}
    return {}
