"""Who is asking: sign-in for pages (Flask-Login sessions), bearer tokens for the API (Flask-HTTPAuth),
and the pages to sign in, sign out and manage one's API tokens."""
from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, abort, current_app, g, redirect, render_template, request, url_for
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
# /metrics is open here: who may scrape it is decided in nginx (an allow list), see the README.
OPEN_ENDPOINTS = frozenset({"auth.login", "static", "api.health", "prometheus_metrics"})


@login_manager.user_loader
def _load_user(user_id: str):
    return accounts.signed_in_user(int(user_id)) if user_id.isdigit() else None


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
    if not current_user.is_authenticated:
        if request.headers.get("HX-Request"):
            # A poll whose session ended: have htmx load the sign-in page, not swap it into the block.
            return "", 401, {"HX-Redirect": url_for("auth.login", next=request.referrer and urlsplit(
                request.referrer).path)}
        return login_manager.unauthorized()
    return None


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
    login_user(user)
    return redirect(_safe_next(request.form.get("next")), code=303)


@bp.post("/logout")
@login_required
def logout():
    logout_user()
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
