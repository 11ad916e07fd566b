"""Error responses: JSON under /api, pages elsewhere; a database outage is a 503, never a trace."""
from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import InterfaceError, OperationalError
from werkzeug.exceptions import HTTPException

from app.extensions import db

log = logging.getLogger(__name__)


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def _respond(status: int, message: str, details: dict | None = None):
    if _wants_json():
        return jsonify({"error": message, "details": details or {}}), status
    return render_template("error.html", status=status, message=message), status


def register(app: Flask) -> None:
    @app.errorhandler(CSRFError)
    def csrf_failed(exc: CSRFError):
        return _respond(400, f"The form expired or was not sent by this site ({exc.description}). "
                             "Reload the page and submit it again.")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            return _respond(413, "request body too large", {"body": f"must be at most {limit} bytes"})
        return _respond(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def database_unavailable(exc: Exception):
        log.warning("database error on %s %s: %s", request.method, request.path, exc.__class__.__name__)
        try:
            db.session.rollback()
        except Exception:  # the connection is already gone; nothing to roll back
            pass
        return _respond(503, "The database is unavailable right now; nothing was lost. Try again shortly.")
