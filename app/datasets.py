"""Datasets: parsing and checking JSONL uploads (pure), storing and reading them (database)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable, Iterator

from sqlalchemy import func, insert, select, text

from app.extensions import db
from app.metrics import timed_db_write
from app.models import Dataset, DatasetExample

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
MAX_REPORTED_LINE_ERRORS = 20
INSERT_BATCH = 2000


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str


class DatasetError(ValueError):
    """An upload was rejected; `details` maps each field to its problem."""

    def __init__(self, details: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in details.items()))
        self.details = details


def check_name(name: str | None) -> str:
    """Return the cleaned dataset name or raise DatasetError."""
    name = (name or "").strip()
    if not name:
        raise DatasetError({"name": "is required"})
    if not NAME_PATTERN.match(name):
        raise DatasetError({"name": "use 1-48 letters, digits, '.', '_' or '-', starting with a letter or digit"})
    if re.search(r"-v\d+$", name):
        raise DatasetError({"name": "must not end in -vN: versions are added for you"})
    return name


def _example_problem(value: object) -> str | None:
    if not isinstance(value, dict):
        return "must be a JSON object with \"prompt\" and \"response\""
    for key in ("prompt", "response"):
        if key not in value:
            return f"missing \"{key}\""
        if not isinstance(value[key], str):
            return f"\"{key}\" must be a string"
    if not value["response"].strip():
        return "\"response\" must not be empty"
    return None


def parse_jsonl(data: bytes | str) -> list[Example]:
    """Parse a JSONL upload, one {"prompt", "response"} object per line.

    Blank lines are skipped. Every bad line is reported with its number (the first
    20 of them) and nothing is returned when any line is bad.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DatasetError({"file": f"is not UTF-8 text (byte {exc.start})"}) from None
    examples: list[Example] = []
    problems: list[str] = []
    bad_lines = 0
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problem = f"invalid JSON ({exc.msg} at column {exc.colno})"
        else:
            problem = _example_problem(value)
        if problem:
            bad_lines += 1
            if len(problems) < MAX_REPORTED_LINE_ERRORS:
                problems.append(f"line {number}: {problem}")
            continue
        examples.append(Example(value["prompt"], value["response"]))
    if problems:
        more = f" (and {bad_lines - len(problems)} more bad lines)" if bad_lines > len(problems) else ""
        raise DatasetError({"file": "; ".join(problems) + more})
    if not examples:
        raise DatasetError({"file": "holds no examples"})
    return examples


def parse_example_list(items: object) -> list[Example]:
    """Parse the `examples` array of a JSON upload, reporting bad items by index."""
    if not isinstance(items, list):
        raise DatasetError({"examples": "must be a list of {\"prompt\", \"response\"} objects"})
    problems = [f"item {i}: {p}" for i, p in ((i, _example_problem(v)) for i, v in enumerate(items)) if p]
    if problems:
        raise DatasetError({"examples": "; ".join(problems[:MAX_REPORTED_LINE_ERRORS])})
    if not items:
        raise DatasetError({"examples": "holds no examples"})
    return [Example(v["prompt"], v["response"]) for v in items]


def compute_stats(examples: list[Example]) -> dict:
    """Counts and sizes shown on the dataset's page."""
    prompt_lengths = [len(e.prompt) for e in examples]
    response_lengths = [len(e.response) for e in examples]
    return {
        "prompt_chars_mean": round(sum(prompt_lengths) / len(examples), 1),
        "prompt_chars_max": max(prompt_lengths),
        "response_chars_mean": round(sum(response_lengths) / len(examples), 1),
        "response_chars_max": max(response_lengths),
    }


def _size_bytes(examples: Iterable[Example]) -> int:
    return sum(len(json.dumps({"prompt": e.prompt, "response": e.response}).encode()) + 1 for e in examples)


def create_dataset(name: str, examples: list[Example], description: str = "") -> Dataset:
    """Store a new version of the named dataset and return it (key `name-vN`)."""
    name = check_name(name)
    with timed_db_write("create_dataset"):
        # Serialise uploads of one name so two of them cannot take the same version.
        db.session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})
        latest = db.session.scalar(select(func.max(Dataset.version)).where(Dataset.name == name)) or 0
        version = latest + 1
        dataset = Dataset(key=f"{name}-v{version}", name=name, version=version,
                          description=(description or "").strip()[:2000], num_examples=len(examples),
                          size_bytes=_size_bytes(examples), stats=compute_stats(examples))
        db.session.add(dataset)
        db.session.flush()
        rows = [{"dataset_key": dataset.key, "position": i, "prompt": e.prompt, "response": e.response}
                for i, e in enumerate(examples)]
        for start in range(0, len(rows), INSERT_BATCH):
            db.session.execute(insert(DatasetExample), rows[start:start + INSERT_BATCH])
        db.session.commit()
    return dataset


def get_dataset(key: str) -> Dataset | None:
    return db.session.get(Dataset, key)


def list_datasets() -> list[Dataset]:
    return list(db.session.scalars(select(Dataset).order_by(Dataset.name, Dataset.version.desc())))


def preview_examples(key: str, limit: int = 10) -> list[DatasetExample]:
    stmt = (select(DatasetExample).where(DatasetExample.dataset_key == key)
            .order_by(DatasetExample.position).limit(limit))
    return list(db.session.scalars(stmt))


def iter_examples(key: str, batch: int = 5000) -> Iterator[Example]:
    """Every example of a dataset in upload order, read in batches."""
    position = -1
    while True:
        stmt = (select(DatasetExample.position, DatasetExample.prompt, DatasetExample.response)
                .where(DatasetExample.dataset_key == key, DatasetExample.position > position)
                .order_by(DatasetExample.position).limit(batch))
        rows = db.session.execute(stmt).all()
        if not rows:
            return
        for row in rows:
            yield Example(row.prompt, row.response)
        position = rows[-1].position


def dataset_to_dict(dataset: Dataset) -> dict:
    return {
        "key": dataset.key, "name": dataset.name, "version": dataset.version,
        "description": dataset.description, "num_examples": dataset.num_examples,
        "size_bytes": dataset.size_bytes, "stats": dataset.stats,
        "created_at": dataset.created_at.isoformat(),
    }
