"""Validation of a run's configuration: one pure function shared by the form and the API."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from app.contract import device_mesh, model_catalog, model_refs, prompt_format, scoring, training_plan
from app.errors import ValidationError, echo
from app.run_states import MODE_CHOICES


@dataclass(frozen=True)
class Field:
    """One hyperparameter: its type, default, bounds and the words shown next to it."""

    name: str
    kind: str  # "int", "float", "choice", "str"
    default: Any
    label: str
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    exclusive_minimum: bool = False


FIELDS: tuple[Field, ...] = (
    Field("learning_rate", "float", 1e-3, "Learning rate", "Peak learning rate of the AdamW optimizer.",
          minimum=0.0, maximum=1.0, exclusive_minimum=True),
    Field("lr_schedule", "choice", "cosine", "Schedule", "How the learning rate moves after warmup.",
          choices=("constant", "cosine", "linear")),
    Field("warmup_steps", "int", 0, "Warmup steps", "Steps of linear warmup from 0 to the peak rate.",
          minimum=0, maximum=100_000),
    Field("weight_decay", "float", 0.0, "Weight decay", "AdamW decoupled weight decay.",
          minimum=0.0, maximum=1.0),
    Field("num_epochs", "int", 3, "Epochs", "Passes over the training split.", minimum=1, maximum=1000),
    Field("max_steps", "int", None, "Max steps", "Optional cap on optimizer steps: training stops at this step "
          "or at the end of the last epoch, whichever comes first.", minimum=1, maximum=10_000_000),
    Field("batch_size", "int", 4, "Batch size", "Examples per optimizer step.", minimum=1, maximum=4096),
    Field("max_seq_length", "int", 128, "Max sequence length", "Tokens per example; longer ones are cut.",
          minimum=8, maximum=32_768),
    Field("finetune", "choice", "full", "Fine-tuning", "Train every weight, or LoRA adapters only.",
          choices=("full", "lora")),
    Field("lora_rank", "int", 8, "LoRA rank", "Rank of the LoRA adapters (LoRA only).", minimum=1, maximum=1024),
    Field("lora_alpha", "float", 16.0, "LoRA alpha", "Scale of the LoRA update (LoRA only).",
          minimum=0.0, maximum=4096.0, exclusive_minimum=True),
    Field("eval_fraction", "float", 0.1, "Eval split", "Fraction of examples held out for evaluation.",
          minimum=0.0, maximum=0.5),
    Field("eval_every_n_steps", "int", 20, "Eval every N steps", "How often the eval loss is measured on the "
          "held-out split; it is measured after the last step too.", minimum=1, maximum=1_000_000),
    Field("checkpoint_every_n_steps", "int", 100, "Checkpoint every N steps",
          "How often a checkpoint is saved (a final one is always saved).", minimum=1, maximum=1_000_000),
    Field("seed", "int", 0, "Seed", "Seeds the model init, the data shuffle and the split.",
          minimum=0, maximum=2**31 - 1),
    Field("eval_max_examples", "int", 200, "Scored examples", "Held-out prompts answered and scored before and "
          "after training (0 turns scoring off).", minimum=0, maximum=10_000),
    Field("eval_max_new_tokens", "int", 64, "Answer length", "Most tokens generated for each scored answer.",
          minimum=1, maximum=4096),
    Field("prompt_format", "choice", "plain", "Prompt format", "plain: the prompt, a newline, the response. chat: "
          "the checkpoint's own chat template, for an instruction model that carries one.",
          choices=prompt_format.PROMPT_FORMATS),
    Field("devices", "int", 1, "Devices", "Accelerators the run trains on, all on one worker host; "
          "a worker runs it once that many of its devices are free.", minimum=1, maximum=device_mesh.MAX_DEVICES),
    Field("max_attempts", "int", 1, "Attempts", "Starts allowed if its worker is lost (async only; "
          "a restart resumes from the last checkpoint).", minimum=1, maximum=10),
)
FIELDS_BY_NAME = {f.name: f for f in FIELDS}
TOP_LEVEL = ("dataset_key", "model_id", "name", "tags", "eval_dataset_key", "answer_pattern", "mesh", "candidate_for")
NAME_MAX = 120
TAGS_MAX = 10
TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,31}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
KNOWN_KEYS = frozenset(TOP_LEVEL) | frozenset(FIELDS_BY_NAME)


INVALID_CONFIG = "invalid run configuration"


def _describe_range(field: Field) -> str:
    low = f"greater than {field.minimum:g}" if field.exclusive_minimum else f"at least {field.minimum:g}"
    return f"must be {low} and at most {field.maximum:g}"


def _coerce_number(field: Field, value: Any, cast: Callable[[Any], Any]) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"must be a number, not {str(value).lower()}")
    if isinstance(value, str):
        value = value.strip()
    try:
        number = cast(value)
    except (TypeError, ValueError):
        kind = "a whole number" if field.kind == "int" else "a number"
        raise ValueError(f"must be {kind}, got {echo(value)}") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError("must be a finite number")
    too_low = number <= field.minimum if field.exclusive_minimum else number < field.minimum
    if too_low or number > field.maximum:
        raise ValueError(_describe_range(field))
    return number


def _as_int(value: Any) -> int:
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError
        return int(value)
    return int(value)


def _coerce(field: Field, value: Any) -> Any:
    if field.kind == "int":
        return _coerce_number(field, value, _as_int)
    if field.kind == "float":
        return _coerce_number(field, value, float)
    if field.kind == "choice":
        if value not in field.choices:
            raise ValueError(f"must be one of {', '.join(field.choices)}")
        return value
    raise AssertionError(f"unknown field kind {field.kind}")


def _is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def validate_run_config(raw: dict[str, Any], *, allow_unknown: bool = False,
                        model_roots: Sequence[Path] = ()) -> dict[str, Any]:
    """Return the full run config with defaults filled in, or raise ValidationError naming every bad field.

    Checks shape and bounds only; whether the dataset exists is the run service's business.
    """
    if not isinstance(raw, dict):
        raise ValidationError(INVALID_CONFIG, {"body": "must be a JSON object"})
    errors: dict[str, str] = {}
    config: dict[str, Any] = {}

    if not allow_unknown:
        for key in sorted(set(raw) - KNOWN_KEYS):
            errors[key] = "unknown field"

    dataset_key = raw.get("dataset_key")
    if _is_blank(dataset_key):
        errors["dataset_key"] = "is required"
    elif not isinstance(dataset_key, str):
        errors["dataset_key"] = "must be a string"
    else:
        config["dataset_key"] = dataset_key.strip()

    model_id = raw.get("model_id")
    if _is_blank(model_id):
        model_id = model_catalog.DEFAULT_MODEL_ID
    if not isinstance(model_id, str):
        errors["model_id"] = "must be a string"
    else:
        problem = model_catalog.check_model_id(model_id.strip(), model_roots)
        if problem:
            errors["model_id"] = problem
        elif model_refs.is_model_ref(model_id.strip()):
            config["model_id"] = str(model_refs.parse(model_id.strip()))  # the run service finds its version
        elif model_catalog.is_checkpoint_path(model_id.strip()):
            # The path checked is the path used: the trainer, in another process and directory, opens
            # this resolved one (/proc/self/cwd/... or a link would name something else there).
            config["model_id"] = str(Path(model_id.strip()).resolve())
        else:
            config["model_id"] = model_id.strip()

    for key, check in (("name", check_name), ("tags", _check_tags), ("eval_dataset_key", _check_eval_dataset_key),
                       ("answer_pattern", _check_answer_pattern), ("mesh", device_mesh.parse_mesh),
                       ("candidate_for", _check_candidate_for)):
        try:
            config[key] = check(raw.get(key))
        except ValueError as exc:
            errors[key] = str(exc)

    for field in FIELDS:
        value = raw.get(field.name)
        if _is_blank(value):
            config[field.name] = field.default
            continue
        try:
            config[field.name] = _coerce(field, value)
        except ValueError as exc:
            errors[field.name] = str(exc)

    if config.get("mesh") and _is_blank(raw.get("devices")) and "devices" not in errors:
        config["devices"] = device_mesh.mesh_size(config["mesh"])  # the mesh says how many
    elif config.get("mesh") is None and isinstance(config.get("devices"), int) and "mesh" not in errors:
        config["mesh"] = device_mesh.default_mesh(config["devices"])
    # Problems between fields come in the same round as the rest, for the fields that are valid.
    errors.update({k: v for k, v in _cross_field_problems(config).items() if k not in errors})
    if errors:
        raise ConfigErrors(errors, config)
    return config


class ConfigErrors(ValidationError):
    """A config with bad fields; `valid` holds the fields that passed, for checks that need several."""

    def __init__(self, details: dict[str, str], valid: dict[str, Any]):
        super().__init__(INVALID_CONFIG, details)
        self.valid = valid


def check_name(value: Any) -> str | None:
    """A run's optional display name: one line of at most NAME_MAX characters."""
    if _is_blank(value):
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string")
    value = value.strip()
    if _CONTROL.search(value):
        raise ValueError("must be one line of text, without control characters")
    if len(value) > NAME_MAX:
        raise ValueError(f"must be at most {NAME_MAX} characters")
    return value


def _check_eval_dataset_key(value: Any) -> str | None:
    """The dataset runs are scored on instead of their held-out split (whether it exists is the service's check)."""
    if _is_blank(value):
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value.strip()


def _check_candidate_for(value: Any) -> str | None:
    """The registered model a run competes for (whether it exists is the service's check)."""
    if _is_blank(value):
        return None
    if not isinstance(value, str) or not model_refs.NAME_PATTERN.match(value.strip()):
        raise ValueError("must be a registered model's name")
    return value.strip()


def _check_answer_pattern(value: Any) -> str | None:
    """A regex with one group that picks the final answer out of a text."""
    if _is_blank(value):
        return None
    if not isinstance(value, str):
        raise ValueError("must be a string")
    scoring.compile_answer_pattern(value)
    return value


def _check_tags(value: Any) -> list[str]:
    """Tags from a list (the API) or a comma-separated string (the form), de-duplicated in order."""
    if _is_blank(value):
        return []
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(tag, str) for tag in value):
        raise ValueError("must be a list of strings, or one string of comma-separated tags")
    tags = list(dict.fromkeys(tag.strip() for tag in value))
    for tag in tags:
        if not TAG_PATTERN.match(tag):
            raise ValueError(f"tag {tag[:40]!r} must be 1-32 letters, digits, '.', '_', ':' or '-', "
                             "starting with a letter or digit")
    if len(tags) > TAGS_MAX:
        raise ValueError(f"must be at most {TAGS_MAX} tags")
    return tags


def _cross_field_problems(config: dict[str, Any]) -> dict[str, str]:
    problems = {}
    max_steps = config.get("max_steps")
    if max_steps is not None and config.get("warmup_steps") is not None and config["warmup_steps"] >= max_steps:
        problems["warmup_steps"] = f"must be smaller than max_steps ({max_steps})"
    problems.update(_mesh_problems(config))
    if config.get("prompt_format") == prompt_format.CHAT and "model_id" in config:
        if model_refs.is_model_ref(config["model_id"]):
            pass  # the version's recorded facts say, in the run service
        elif config["model_id"] in model_catalog.PRESETS:
            problems["prompt_format"] = "chat needs a checkpoint with a chat template; the presets have none: use plain"
        else:
            try:
                prompt_format.chat_format(Path(config["model_id"]))
            except (prompt_format.TemplateError, OSError) as exc:
                problems["prompt_format"] = f"chat cannot be used: {exc}; use plain"
    return problems


def _mesh_problems(config: dict[str, Any]) -> dict[str, str]:
    """The mesh against the devices, the model's heads (tp splits them) and the batch (fsdp splits it)."""
    mesh, devices = config.get("mesh"), config.get("devices")
    if not mesh or not isinstance(devices, int):
        return {}
    if device_mesh.mesh_size(mesh) != devices:
        return {"mesh": f"{device_mesh.describe(mesh)} lays out {device_mesh.mesh_size(mesh)} devices, "
                        f"but devices is {devices}: their product must equal devices"}
    problems = {}
    heads = model_catalog.attention_heads(config["model_id"]) if "model_id" in config else None
    tp = mesh["tp"]
    if heads and (heads[0] % tp or heads[1] % tp):
        problems["mesh"] = (f"tp={tp} must divide the model's {heads[0]} attention heads and its {heads[1]} "
                            f"key/value heads")
    batch = config.get("batch_size")
    if isinstance(batch, int) and batch % mesh["fsdp"]:
        problems["batch_size"] = (f"must be a multiple of the mesh's fsdp={mesh['fsdp']}: each device gets an "
                                  "equal share")
    return problems


def steps_problems(config: dict[str, Any], num_examples: int) -> dict[str, str]:
    """Problems that need the dataset's size: warmup that would never end, a batch larger than the split."""
    needed = ("eval_fraction", "batch_size", "num_epochs", "max_steps", "warmup_steps")
    if any(key not in config for key in needed):
        return {}
    train = num_examples - training_plan.eval_count(num_examples, config["eval_fraction"])
    steps = training_plan.total_steps(config, train)
    if num_examples and steps == 0:
        return {"batch_size": f"must be at most the {train} training examples"}
    if steps and config["warmup_steps"] >= steps and "max_steps" not in _cross_field_problems(config):
        return {"warmup_steps": f"must be smaller than the {steps} steps this run will take"}
    return {}


# The form's labels, in the form's order: the error summary lists problems this way, in the page's words.
FORM_LABELS = {"dataset_key": "Dataset", "model_id": "Model", "name": "Name", "tags": "Tags", "mode": "Mode",
               **{f.name: f.label for f in FIELDS}, "mesh": "Mesh", "eval_dataset_key": "Score on",
               "answer_pattern": "Answer pattern", "candidate_for": "Candidate for"}
_FIELD_NAME = re.compile(r"\b(" + "|".join(sorted(FORM_LABELS, key=len, reverse=True)) + r")\b")
_MODE_WORDS = {mode: f"“{words}”" for mode, words in MODE_CHOICES}


def in_form_words(details: dict[str, str]) -> dict[str, str]:
    """A refusal's messages as the form says them: field names become their labels, modes their choices,
    in the form's order."""
    def words(message: str) -> str:
        message = re.sub(r"\((async|sync|dry_run)\)", lambda m: f"(choose {_MODE_WORDS[m[1]]})", message)
        return _FIELD_NAME.sub(lambda m: f"“{FORM_LABELS[m[1]]}”", message)
    ordered = [k for k in FORM_LABELS if k in details] + [k for k in details if k not in FORM_LABELS]
    return {key: words(str(details[key])) for key in ordered}


def form_defaults() -> dict[str, Any]:
    """Values the new-run form starts with."""
    values = {f.name: ("" if f.default is None else f.default) for f in FIELDS}
    values.update(model_id=model_catalog.DEFAULT_MODEL_ID, name="", tags="", eval_dataset_key="", answer_pattern="",
                  mesh="", candidate_for="")
    return values


def form_values(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config as the form shows it (to clone a run): blanks for none, tags comma-separated."""
    values = {**form_defaults(), **{k: ("" if v is None else v) for k, v in config.items()}}
    values["tags"] = ", ".join(config.get("tags") or [])
    values["mesh"] = device_mesh.describe(config["mesh"]) if config.get("mesh") else ""
    return values
