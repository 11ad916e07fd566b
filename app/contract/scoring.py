"""How a generated answer is scored against its reference. Pure, shared by the trainer (which scores)
and the web tier (which checks an `answer_pattern` before a run is queued).

exact_match   the prediction equals the reference once both are trimmed and their whitespace collapsed.
answer_match  the final answers are equal: with an answer_pattern, its one group at its last match;
              otherwise the text after the last "####", else the last number. Numbers compare by
              value ("1,200" = "1200.0"). A reference without a final answer falls back to exact_match.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Iterable

ANSWER_MARK = "####"
PATTERN_MAX_CHARS = 200
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def normalize(text: str) -> str:
    """Trimmed, with every run of whitespace made one space."""
    return " ".join(text.split())


def compile_answer_pattern(pattern: str):
    """The pattern compiled for RE2; ValueError saying what is wrong when it cannot serve as an answer_pattern.

    RE2 matches in time linear in the text, whatever the pattern: a pattern like (a+)+$ that Python's
    engine takes minutes over (it doubles per character) is matched at once. It has no backreferences
    or lookaround, so such a pattern is refused here, before a run is queued."""
    import re2

    if len(pattern) > PATTERN_MAX_CHARS:
        raise ValueError(f"must be at most {PATTERN_MAX_CHARS} characters")
    options = re2.Options()
    options.log_errors = False
    try:
        compiled = re2.compile(pattern, options=options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"is not a regular expression the linear-time matcher (RE2) runs: {reason}; "
                         "backreferences and lookaround are not supported") from None
    if compiled.groups != 1:
        raise ValueError(f"must hold exactly one capturing group, not {compiled.groups}")
    return compiled


def _canonical(answer: str) -> str:
    answer = normalize(answer)
    candidate = answer.replace(",", "")
    if _NUMBER.fullmatch(candidate):
        try:
            value = Decimal(candidate)
            return format(value.normalize(), "f") if value else "0"
        except InvalidOperation:
            pass
    return answer


def extract_answer(text: str, pattern=None) -> str | None:
    """The final answer a text gives, canonical; None when it gives none."""
    if pattern is not None:
        matches = list(pattern.finditer(text))
        if not matches or matches[-1].group(1) is None:
            return None
        return _canonical(matches[-1].group(1))
    if ANSWER_MARK in text:
        return _canonical(text.rsplit(ANSWER_MARK, 1)[1])
    numbers = _NUMBER.findall(text)
    return _canonical(numbers[-1]) if numbers else None


@dataclass(frozen=True)
class Verdict:
    exact: bool
    answer: bool


def judge(prediction: str, reference: str, pattern=None) -> Verdict:
    """Score one prediction against its reference."""
    exact = normalize(prediction) == normalize(reference)
    expected = extract_answer(reference, pattern)
    if expected is None:
        return Verdict(exact, exact)
    return Verdict(exact, extract_answer(prediction, pattern) == expected)


def summarize(verdicts: Iterable[Verdict], generated_tokens: Iterable[int], seconds: float) -> dict:
    """The pass's metrics: the two match rates in [0, 1], mean generated tokens, generation tokens/s."""
    verdicts, generated_tokens = list(verdicts), list(generated_tokens)
    n = len(verdicts)
    tokens = sum(generated_tokens)
    return {
        "examples": n,
        "exact_match": round(sum(v.exact for v in verdicts) / n, 4) if n else None,
        "answer_match": round(sum(v.answer for v in verdicts) / n, 4) if n else None,
        "mean_generated_tokens": round(tokens / n, 2) if n else None,
        "generation_tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else None,
        "seconds": round(seconds, 3),
    }


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """The 95 % Wilson score interval of a match rate measured on n examples; None without examples.

    Unlike rate ± z·sqrt(rate(1-rate)/n) it stays inside [0, 1] and is not zero-width at 0 % or 100 %."""
    if not n:
        return None
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
