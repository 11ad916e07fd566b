"""Error responses: JSON under /api, pages elsewhere; a database outage is a 503, never a trace.

Every error body is built by `error_body`; every refusal a service raises (`app.errors.AppError`:
validation, conflict, not found) is turned into a response by the one handler below.
"""
from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException, SecurityError

from app.errors import AppError, TooManyRequests, cut
from app.extensions import db

log = logging.getLogger(__name__)


def error_body(message: str, details: dict[str, str] | None = None) -> dict:
    """The one shape of every API error: {"error": ..., "details": {field: message}}."""
    return {"error": cut(message), "details": {cut(str(k)): cut(str(v)) for k, v in (details or {}).items()}}


def api_error(status: int, message: str, details: dict[str, str] | None = None):
    """An API error response."""
    return jsonify(error_body(message, details)), status


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def respond(status: int, message: str, details: dict[str, str] | None = None):
    """An error as JSON for the API, or as the error page."""
    if _wants_json():
        return api_error(status, message, details)
    body = error_body(message, details)
    return render_template("error.html", status=status, message=body["error"], details=body["details"]), status


def register(app: Flask) -> None:
    @app.errorhandler(AppError)
    def refused(exc: AppError):
        response = respond(exc.status, exc.message, exc.details)
        if isinstance(exc, TooManyRequests):
            return response[0], response[1], {"Retry-After": str(exc.retry_after)}
        return response

    @app.errorhandler(CSRFError)
    def csrf_failed(exc: CSRFError):
        return respond(400, f"The form expired or was not sent by this site ({exc.description}). "
                            "Reload the page and submit it again.")

    @app.errorhandler(SecurityError)
    def untrusted_host(exc: SecurityError):
        # No page can be rendered for a host we do not serve: its links would point there.
        message = "this server does not answer to that host name (TUNIX_ALLOWED_HOSTS)"
        if _wants_json():
            return api_error(400, message, {"Host": "is not an allowed host name"})
        return message + "\n", 400, {"Content-Type": "text/plain; charset=utf-8"}

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            # Werkzeug says nothing more; a form under the size limit was refused for its parts.
            if request.mimetype == "multipart/form-data" and (request.content_length or 0) <= (limit or 0):
                return respond(413, "request form too large", {"body": (
                    f"must have at most {app.config.get('MAX_FORM_PARTS')} form parts, and no field but a file "
                    f"over {app.config.get('MAX_FORM_MEMORY_SIZE')} bytes")})
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
