"""Storing and reading datasets (database)."""
from __future__ import annotations

import json
from typing import Iterable, Iterator

from sqlalchemy import func, insert, select, text

from app.datasets.parsing import Example, check_name, compute_stats
from app.extensions import db
from app.instruments import timed_db_write
from app.models import Dataset, DatasetExample

INSERT_BATCH = 2000


def _size_bytes(examples: Iterable[Example]) -> int:
    return sum(len(json.dumps({"prompt": e.prompt, "response": e.response}).encode()) + 1 for e in examples)


def create_dataset(name: str, examples: list[Example], description: str = "",
                   created_by: int | None = None) -> Dataset:
    """Store a new version of the named dataset and return it (key `name-vN`)."""
    name = check_name(name)
    with timed_db_write("create_dataset"):
        # Serialise uploads of one name so two of them cannot take the same version.
        db.session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:name))"), {"name": name})
        latest = db.session.scalar(select(func.max(Dataset.version)).where(Dataset.name == name)) or 0
        version = latest + 1
        dataset = Dataset(key=f"{name}-v{version}", name=name, version=version,
                          description=(description or "").strip()[:2000], num_examples=len(examples),
                          size_bytes=_size_bytes(examples), stats=compute_stats(examples), created_by=created_by)
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
