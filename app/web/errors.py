"""Error responses: JSON under /api, pages elsewhere; a database outage is a 503, never a trace.

Every error body is built by `error_body`; every refusal a service raises (`app.errors.AppError`:
validation, conflict, not found) is turned into a response by the one handler below.
"""
from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

from app.errors import AppError
from app.extensions import db

log = logging.getLogger(__name__)


def error_body(message: str, details: dict[str, str] | None = None) -> dict:
    """The one shape of every API error: {"error": ..., "details": {field: message}}."""
    return {"error": message, "details": dict(details or {})}


def api_error(status: int, message: str, details: dict[str, str] | None = None):
    """An API error response."""
    return jsonify(error_body(message, details)), status


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def respond(status: int, message: str, details: dict[str, str] | None = None):
    """An error as JSON for the API, or as the error page."""
    if _wants_json():
        return api_error(status, message, details)
    return render_template("error.html", status=status, message=message, details=details or {}), status


def register(app: Flask) -> None:
    @app.errorhandler(AppError)
    def refused(exc: AppError):
        return respond(exc.status, exc.message, exc.details)

    @app.errorhandler(CSRFError)
    def csrf_failed(exc: CSRFError):
        return respond(400, f"The form expired or was not sent by this site ({exc.description}). "
                            "Reload the page and submit it again.")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            return respond(413, "request body too large", {"body": f"must be at most {limit} bytes"})
        return respond(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def database_unavailable(exc: Exception):
        log.warning("database error on %s %s: %s", request.method, request.path, exc.__class__.__name__)
        try:
            db.session.rollback()
        except Exception:  # the connection is already gone; nothing to roll back
            pass
        return respond(503, "The database is unavailable right now; nothing was lost. Try again shortly.")
