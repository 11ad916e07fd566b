"""Security headers on every response, and session cookies that are Secure when the request came over HTTPS.

Written here rather than with Flask-Talisman: the policy is five headers and one cookie flag
that depends on the request (nginx terminates TLS and says so in X-Forwarded-Proto), and
Talisman's HTTPS redirects and HSTS belong to nginx in the documented deployment.
"""
from __future__ import annotations

from typing import Callable, Collection

from flask import Flask, current_app, request
from flask.sessions import SecureCookieSessionInterface
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from app.datasets.parsing import unstorable

# No 'unsafe-inline' or 'unsafe-eval' anywhere: scripts and styles come only from /static
# (htmx is configured to inject no style of its own), the chart is SVG with attributes.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
    "object-src 'none'", "frame-ancestors 'none'", "form-action 'self'", "base-uri 'self'",
))
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RejectUnknownMethods:
    """WSGI middleware: a made-up method gets 405 before Flask, so it never becomes a metric label."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") not in KNOWN_METHODS:
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain; charset=utf-8"),
                                                      ("Allow", "GET, HEAD, POST, OPTIONS")])
            return [b"method not allowed\n"]
        return self.wsgi_app(environ, start_response)


class TrustedProxyFix:
    """ProxyFix for requests from the proxy only: a client that reaches gunicorn directly cannot
    claim another address, scheme or host with its own X-Forwarded-* headers."""

    def __init__(self, wsgi_app, trusted: Callable[[], Collection[str]]):
        self.direct = wsgi_app
        self.proxied = ProxyFix(wsgi_app, x_for=1, x_proto=1, x_host=1, x_prefix=0)
        self.trusted = trusted  # read per request: the app's setting, TUNIX_TRUSTED_PROXIES

    def __call__(self, environ, start_response):
        if environ.get("REMOTE_ADDR") in self.trusted():
            return self.proxied(environ, start_response)
        return self.direct(environ, start_response)


class _SessionCookies(SecureCookieSessionInterface):
    """Secure cookies whenever this request was made over HTTPS (ProxyFix applies nginx's word on it)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config.get("SESSION_COOKIE_SECURE")) or request.is_secure


MAX_JSON_DEPTH = 64
UNSTORABLE = "must not contain NUL characters or unpaired surrogates"


def _first_unstorable(value, where: str, depth: int = 0) -> tuple[str, str] | None:
    """(field, problem) for the first string in a JSON value that cannot be stored, or nesting past the limit."""
    if depth > MAX_JSON_DEPTH:
        return where, f"is nested more than {MAX_JSON_DEPTH} levels deep"
    if isinstance(value, str):
        return (where, UNSTORABLE) if unstorable(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(key, str) and unstorable(key):
            return where, UNSTORABLE
        found = _first_unstorable(item, key if depth == 0 and isinstance(key, str) else where, depth + 1)
        if found:
            return found
    return None


def check_input() -> tuple[str, str] | None:
    """Before a view runs: refuse text no view could store, wherever it came in (path, query, form, JSON)."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if request.content_length is None and limit and request.method in ("POST", "PUT", "PATCH") \
            and request.mimetype != "multipart/form-data" and len(request.get_data(cache=True)) >= limit:
        # A chunked body is cut at the limit without a word: say so instead of parsing half of it.
        raise RequestEntityTooLarge()
    if unstorable(request.path):
        return "path", UNSTORABLE
    for source in (request.args, request.form):
        for key, value in source.items(multi=True):
            if unstorable(key) or unstorable(value):
                return key if not unstorable(key) else "field name", UNSTORABLE
    if request.mimetype == "application/json" and request.content_length != 0:
        try:
            body = request.get_json(silent=True)
        except RecursionError:
            return "body", f"is nested more than {MAX_JSON_DEPTH} levels deep"
        if body is not None:
            return _first_unstorable(body, "body")
    return None


def init_app(app: Flask) -> None:
    """Add the headers to every response, use request-aware session cookies, refuse unstorable input."""
    app.session_interface = _SessionCookies()

    @app.before_request
    def refuse_unstorable_input():
        problem = check_input()
        if problem is not None:
            from app.web.errors import respond

            return respond(400, "request holds text that cannot be stored", {problem[0]: problem[1]})

    @app.after_request
    def add_security_headers(response):
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response
