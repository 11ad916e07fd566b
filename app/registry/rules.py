"""What the registry's services share: its names, who may change a model, and a run's scores as kept."""
from __future__ import annotations

from typing import Any

from app.accounts.service import Actor
from app.contract import model_refs
from app.errors import ForbiddenError, ValidationError
from app.models import RegisteredModel, TunixRun


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not model_refs.NAME_PATTERN.match(name.strip()):
        raise ValidationError("invalid model name", {"name": "use 1-64 letters, digits, '.', '_' or '-', starting "
                                                            "with a letter or digit"})
    return name.strip()


def check_alias(alias: Any, field: str = "alias") -> str:
    if not isinstance(alias, str) or not model_refs.ALIAS_PATTERN.match(alias.strip()):
        raise ValidationError("invalid alias", {field: "use 1-64 letters, digits, '_' or '-', starting with a letter"})
    return alias.strip()


def check_owner(model: RegisteredModel, actor: Actor, what: str) -> None:
    if not actor.may_change(model.owner_id):
        raise ForbiddenError(f"only the owner of {model.name} or an admin may {what}",
                             {"name": f"{model.name} belongs to another user"})


def scores_of(run: TunixRun) -> dict[str, Any]:
    """A run's scores as a version keeps them: the indexed ones and every number its evaluation recorded."""
    evaluation = (run.result or {}).get("evaluation") if isinstance(run.result, dict) else None
    after = evaluation.get("after") if isinstance(evaluation, dict) else None
    recorded = {k: v for k, v in (after or {}).items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)} if isinstance(after, dict) else {}
    return {**recorded, "final_loss": run.final_loss, "final_eval_loss": run.final_eval_loss,
            "answer_match": run.answer_match, "exact_match": run.exact_match, "evaluated_on": run.evaluated_on,
            "examples": recorded.get("examples")}
