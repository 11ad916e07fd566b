"""Who is asking: sign-in for pages (Flask-Login sessions), bearer tokens for the API (Flask-HTTPAuth),
and the pages to sign in, sign out and manage one's API tokens."""
from __future__ import annotations

import time
from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, g, redirect, render_template, request, session, url_for
from flask_httpauth import HTTPTokenAuth
from flask_login import current_user, login_required, login_user, logout_user

from app.accounts import service as accounts
from app.accounts.service import Actor
from app.errors import ValidationError
from app.extensions import login_manager
from app.web.errors import error_body

bp = Blueprint("auth", __name__)
token_auth = HTTPTokenAuth(scheme="Bearer")

# Pages and files anyone may fetch without signing in.
# /metrics is open here: who may scrape it is decided in nginx (an allow list), see docs/security.md.
OPEN_ENDPOINTS = frozenset({"auth.login", "static", "api.health", "api.openapi_document",
                            "prometheus_metrics"})


@login_manager.user_loader
def _load_user(session_id: str):
    return accounts.session_user(session_id)


@token_auth.verify_token
def _verify_token(token: str):
    return accounts.user_for_token(token)


@token_auth.error_handler
def _token_refused(status: int):
    details = {"Authorization": "send 'Bearer <token>'; create a token on /settings/tokens or with "
                                "`flask --app wsgi tokens create NAME`"}
    return error_body("sign-in required: a valid API token is missing", details), status


def require_identity():
    """Before every request: the API needs a bearer token, pages a signed-in session."""
    # Identity comes from this request alone, even when an app context outlives one request
    # (as in the tests); Flask-Login would otherwise reuse the user it cached on `g`.
    g.pop("_login_user", None)
    g.pop("flask_httpauth_user", None)
    if request.endpoint in OPEN_ENDPOINTS or request.endpoint is None:
        return None
    if request.blueprint == "api":
        # The session cookie alone never drives the API, so no other site's page can.
        return token_auth.login_required(lambda: None)()
    if current_user.is_authenticated and _session_expired():
        logout_user()
        session.clear()
    if not current_user.is_authenticated:
        if request.headers.get("HX-Request"):
            # A poll whose session ended: have htmx load the sign-in page, not swap it into the block.
            return "", 401, {"HX-Redirect": url_for("auth.login", next=request.referrer and urlsplit(
                request.referrer).path)}
        return login_manager.unauthorized()
    return None


SEEN_EVERY_SECONDS = 60  # a session's last use is written into its cookie at most this often


def _session_expired() -> bool:
    """Past the absolute or the idle lifetime (TUNIX_SESSION_MAX_SECONDS, TUNIX_SESSION_IDLE_SECONDS);
    otherwise notes the session's use."""
    now = time.time()
    started, seen = session.get("signed_in_at"), session.get("seen_at")
    if not isinstance(started, (int, float)) or not isinstance(seen, (int, float)):
        return True
    config = current_app.config
    if now - started > config["SESSION_MAX_SECONDS"] or now - seen > config["SESSION_IDLE_SECONDS"]:
        return True
    if now - seen > SEEN_EVERY_SECONDS:
        session["seen_at"] = now
    return False


def current_actor() -> Actor:
    """The signed-in user (page) or the token's owner (API), as the services see it."""
    user = token_auth.current_user() if request.blueprint == "api" else current_user
    if user is None or not getattr(user, "is_authenticated", False):
        abort(401)
    return Actor.of(user)


def _safe_next(target: str | None) -> str:
    # Only a path on this site: never an absolute or protocol-relative URL (open redirect).
    if not target or not target.startswith("/") or target.startswith("//") or urlsplit(target).netloc:
        return url_for("pages.list_runs")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    if request.method == "GET":
        if current_user.is_authenticated:
            return redirect(_safe_next(request.args.get("next")))
        return render_template("login.html", errors={}, values={}, next=request.args.get("next", ""))
    values = {"username": request.form.get("username", "")}
    config = current_app.config
    try:
        user = accounts.authenticate(values["username"], request.form.get("password", ""), request.remote_addr,
                                     max_failures=config["SIGNIN_MAX_FAILURES"],
                                     window_seconds=config["SIGNIN_WINDOW_SECONDS"])
    except (ValidationError, accounts.TooManyAttempts) as exc:
        return render_template("login.html", errors=exc.details, values=values,
                               next=request.form.get("next", "")), exc.status
    # A fresh session: nothing from before the sign-in carries over, the CSRF secret included.
    session.clear()
    login_user(user)
    session["signed_in_at"] = session["seen_at"] = time.time()
    return redirect(_safe_next(request.form.get("next")), code=303)


@bp.post("/logout")
@login_required
def logout():
    """Sign out: every session of this user ends, here and in every other browser (a copy of the
    cookie included), since a session is valid only under the user's current generation."""
    accounts.end_sessions(current_user.id)
    logout_user()
    session.clear()
    return redirect(url_for("auth.login"), code=303)


@bp.get("/settings/tokens")
@login_required
def tokens():
    return render_template("settings/tokens.html", tokens=accounts.list_tokens(current_user.id), new_secret=None,
                           errors={})


@bp.post("/settings/tokens")
@login_required
def create_token():
    try:
        _, secret = accounts.create_token(current_user, request.form.get("label", ""))
    except ValidationError as exc:
        return render_template("settings/tokens.html", tokens=accounts.list_tokens(current_user.id),
                               new_secret=None, errors=exc.details), 422
    # The secret is on this page alone: no cache, the browser's or a proxy's, may keep it.
    return render_template("settings/tokens.html", tokens=accounts.list_tokens(current_user.id), new_secret=secret,
                           errors={}), 201, {"Cache-Control": "no-store"}


@bp.post("/settings/tokens/<int:token_id>/revoke")
@login_required
def revoke_token(token_id: int):
    if not accounts.revoke_token(current_user.id, token_id):
        abort(404, description="No such token of yours.")
    return redirect(url_for("auth.tokens"), code=303)
