"""The errors services raise for a caller to act on; the web layer turns each into one response shape."""
from __future__ import annotations


ECHO_CHARS = 60  # of a value a client sent, quoted back in an error
MESSAGE_CHARS = 500  # of any one message in an error body


def echo(value: object) -> str:
    """A value a client sent, quoted for an error message and cut short (it may be megabytes long)."""
    text = repr(value)
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "…"


def cut(message: str) -> str:
    """A message bounded in length, whatever it quotes."""
    return message if len(message) <= MESSAGE_CHARS else message[:MESSAGE_CHARS] + "…"


class AppError(Exception):
    """A request the service refuses: a message, a field -> problem map, and the HTTP status it means."""

    status = 400

    def __init__(self, message: str, details: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = dict(details or {})

    def __str__(self) -> str:
        problems = "; ".join(f"{field}: {problem}" for field, problem in self.details.items())
        return f"{self.message} ({problems})" if problems else self.message


class ValidationError(AppError):
    """Input that breaks a rule; `details` names every bad field."""

    status = 422


class ForbiddenError(AppError):
    """The signed-in user may not do this (e.g. cancel someone else's run)."""

    status = 403


class ConflictError(AppError):
    """The thing exists but is not in a state that allows the request."""

    status = 409


class StoredFileCorrupted(AppError):
    """A stored file is not the one its run recorded (size, ETag or checksum): it is not served."""

    status = 502


class StoreUnreachable(AppError):
    """The artifact store did not answer in time."""

    status = 503


class TooManyRequests(AppError):
    """The user has as much waiting as a limit allows; `retry_after` seconds is a fair wait."""

    status = 429

    def __init__(self, message: str, details: dict[str, str] | None = None, retry_after: int = 5):
        super().__init__(message, details)
        self.retry_after = retry_after


class NotFoundError(AppError):
    """No such run, dataset or file."""

    status = 404
