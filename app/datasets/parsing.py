"""Parsing and checking dataset uploads: pure functions, no database."""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from typing import IO, Iterable, Iterator

from app.errors import ValidationError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
MAX_REPORTED_LINE_ERRORS = 20
INSERT_BATCH = 2000


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str


INVALID_DATASET = "invalid dataset"


def _invalid(field: str, problem: str) -> ValidationError:
    return ValidationError(INVALID_DATASET, {field: problem})


def check_name(name: str | None) -> str:
    """Return the cleaned dataset name or raise ValidationError."""
    name = (name or "").strip()
    if not name:
        raise _invalid("name", "is required")
    if not NAME_PATTERN.match(name):
        raise _invalid("name", "use 1-48 letters, digits, '.', '_' or '-', starting with a letter or digit")
    if re.search(r"-v\d+$", name):
        raise _invalid("name", "must not end in -vN: versions are added for you")
    return name


def unstorable(text: str) -> bool:
    """True for text Postgres cannot store: a NUL character, or a lone UTF-16 surrogate (from a JSON escape)."""
    return "\x00" in text or any("\ud800" <= c <= "\udfff" for c in text)


def _example_problem(value: object) -> str | None:
    if not isinstance(value, dict):
        return "must be a JSON object with \"prompt\" and \"response\""
    for key in ("prompt", "response"):
        if key not in value:
            return f"missing \"{key}\""
        if not isinstance(value[key], str):
            return f"\"{key}\" must be a string"
        if unstorable(value[key]):
            return f"\"{key}\" must not contain NUL characters or unpaired surrogates"
    if not value["response"].strip():
        return "\"response\" must not be empty"
    return None


@dataclass(frozen=True)
class UploadLimits:
    """How much one upload may hold."""

    max_examples: int = 200_000
    max_example_bytes: int = 1024 * 1024


def _too_many(field: str, limits: UploadLimits) -> ValidationError:
    return _invalid(field, f"holds more than {limits.max_examples} examples (TUNIX_DATASET_MAX_EXAMPLES); "
                           "split it into several datasets")


def _decoded_lines(data: bytes | str | IO[bytes]) -> Iterator[tuple[int, str]]:
    """(number, text) of each line: split on line feeds only, a leading BOM dropped, read as it comes."""
    if isinstance(data, str):
        lines: Iterable = data.removeprefix("\ufeff").split("\n")
    else:
        lines = io.BytesIO(data) if isinstance(data, bytes) else data  # a binary file splits on b"\n" only
    for number, line in enumerate(lines, start=1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise _invalid("file", f"line {number} is not UTF-8 text (byte {exc.start} of the line)") from None
        yield number, line.removesuffix("\n").removesuffix("\r")


def parse_jsonl(data: bytes | str | IO[bytes], limits: UploadLimits = UploadLimits()) -> list[Example]:
    """Parse a JSONL upload, one {"prompt", "response"} object per line, reading a file line by line.

    Lines end at line feeds only (a U+2028 inside a string is text, not a line end), a
    UTF-8 byte order mark is allowed, blank lines are skipped. Every bad line is reported
    with its number (the first 20 of them) and nothing is returned when any line is bad.
    """
    examples: list[Example] = []
    problems: list[str] = []
    bad_lines = 0
    for number, line in _decoded_lines(data):
        if not line.strip():
            continue
        if len(examples) + bad_lines >= limits.max_examples:
            raise _too_many("file", limits)
        if len(line) > limits.max_example_bytes and len(line.encode()) > limits.max_example_bytes:
            bad_lines += 1
            if len(problems) < MAX_REPORTED_LINE_ERRORS:
                problems.append(f"line {number}: longer than {limits.max_example_bytes} bytes "
                                "(TUNIX_DATASET_MAX_EXAMPLE_BYTES)")
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            problem = f"invalid JSON ({exc.msg} at column {exc.colno})"
        except RecursionError:
            problem = "invalid JSON (nested too deeply)"
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
        raise _invalid("file", "; ".join(problems) + more)
    if not examples:
        raise _invalid("file", "holds no examples")
    return examples


def parse_example_list(items: object, limits: UploadLimits = UploadLimits()) -> list[Example]:
    """Parse the `examples` array of a JSON upload, reporting bad items by index."""
    if not isinstance(items, list):
        raise _invalid("examples", "must be a list of {\"prompt\", \"response\"} objects")
    if len(items) > limits.max_examples:
        raise _too_many("examples", limits)
    problems = [f"item {i}: {p}" for i, p in ((i, _example_problem(v)) for i, v in enumerate(items)) if p]
    if problems:
        raise _invalid("examples", "; ".join(problems[:MAX_REPORTED_LINE_ERRORS]))
    if not items:
        raise _invalid("examples", "holds no examples")
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
