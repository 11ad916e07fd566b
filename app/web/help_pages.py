"""Help for people in the browser: how to reach the API from a script, read from the routes themselves."""
from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint, current_app, render_template, request

bp = Blueprint("help", __name__)

SHOWN_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class Route:
    methods: str
    path: str
    summary: str


def api_routes() -> list[Route]:
    """Every /api route this server answers, with the first line of its view's docstring."""
    routes = []
    for rule in current_app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        view = current_app.view_functions[rule.endpoint]
        summary = (view.__doc__ or "").strip().splitlines()[0] if view.__doc__ else ""
        methods = " ".join(m for m in SHOWN_METHODS if m in (rule.methods or ()))
        routes.append(Route(methods, rule.rule, summary))
    return sorted(routes, key=lambda r: (r.path, r.methods))


@bp.get("/help/api")
def api_help():
    """Using the API from a script: a token, the header, examples for this server, every route."""
    return render_template("help/api.html", routes=api_routes(), base=request.host_url.rstrip("/"),
                           run_id=request.args.get("run_id", "RUN_ID")[:36])
