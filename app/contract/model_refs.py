"""References to the model registry, as a run's model_id may name one: models:/<name>/<version> or
models:/<name>@<alias>. Parsed here, without the database, so every layer reads them the same way."""
from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "models:/"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
ALIAS_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_REF = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<number>[0-9]{1,9})|@(?P<alias>[^/@]+))$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: a model's name and either a version number or an alias."""

    name: str
    number: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        return f"{PREFIX}{self.name}/{self.number}" if self.number is not None else f"{PREFIX}{self.name}@{self.alias}"


def is_model_ref(model_id: str) -> bool:
    """True for a model_id that names the registry (whether or not it is well formed)."""
    return model_id.startswith(PREFIX)


def parse(model_id: str) -> ModelRef:
    """The reference a model_id spells, or ValueError saying what is wrong with it."""
    match = _REF.match(model_id)
    if not match or not NAME_PATTERN.match(match["name"]):
        raise ValueError(f"{model_id[:80]!r} is not a registry reference: write models:/<name>/<version> or "
                         "models:/<name>@<alias>")
    if match["alias"] is not None:
        if not ALIAS_PATTERN.match(match["alias"]):
            raise ValueError(f"{match['alias'][:40]!r} is not an alias: 1-64 letters, digits, '_' or '-', "
                             "starting with a letter")
        return ModelRef(match["name"], alias=match["alias"])
    number = int(match["number"])
    if number < 1:
        raise ValueError("version numbers start at 1")
    return ModelRef(match["name"], number=number)
