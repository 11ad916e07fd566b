"""Security headers on every response, and session cookies that are Secure when the request came over HTTPS.

Written here rather than with Flask-Talisman: the policy is five headers and one cookie flag
that depends on the request (nginx terminates TLS and says so in X-Forwarded-Proto), and
Talisman's HTTPS redirects and HSTS belong to nginx in the documented deployment.
"""
from __future__ import annotations

from flask import Flask, request
from flask.sessions import SecureCookieSessionInterface

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


class _SessionCookies(SecureCookieSessionInterface):
    """Secure cookies whenever this request was made over HTTPS (ProxyFix applies nginx's word on it)."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config.get("SESSION_COOKIE_SECURE")) or request.is_secure


def init_app(app: Flask) -> None:
    """Add the headers to every response and use request-aware session cookies."""
    app.session_interface = _SessionCookies()

    @app.after_request
    def add_security_headers(response):
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response
