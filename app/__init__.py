"""Tunix RT: a web service for launching and watching Tunix fine-tuning runs."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flask import Flask

from app.config import PROJECT_ROOT, instance_dir, load_settings


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the Flask application: settings, database, extensions, blueprints."""
    app = Flask(
        __name__,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
        instance_path=str(instance_dir()),
    )
    app.config.update(load_settings())
    if test_config:
        app.config.update(test_config)
    _configure_logging()

    database_url = app.config["DATABASE_URL"]
    if not database_url:
        from app.dev.embedded_postgres import embedded_database_url

        database_url = embedded_database_url(instance_dir())
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {
        "pool_pre_ping": False,  # see ping_idle_connections
        "pool_size": app.config["DB_POOL_SIZE"],
        "max_overflow": app.config["DB_MAX_OVERFLOW"],
    }

    from app.extensions import csrf, db, login_manager, migrate, ping_idle_connections

    db.init_app(app)
    with app.app_context():
        ping_idle_connections(db.engine, app.config["DB_PING_IDLE_SECONDS"])
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"))
    csrf.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "auth.login"
    login_manager.login_message = None  # the sign-in page says enough; no flash in the session

    from app import cli
    from app.web import (api, auth, errors, formatting, help_pages, metrics, model_api, model_pages, pages,
                         playground_api, playground_pages, security, sweep_pages)

    _version_static_urls(app)
    app.register_blueprint(auth.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(sweep_pages.bp)
    app.register_blueprint(model_pages.bp)
    app.register_blueprint(playground_pages.bp)
    app.register_blueprint(help_pages.bp)
    app.register_blueprint(api.bp)
    # The API authenticates every call with a bearer token, which no other site can send.
    csrf.exempt(api.bp)
    app.before_request(auth.require_identity)
    security.init_app(app)
    errors.register(app)
    metrics.init_app(app)
    cli.register(app)
    app.jinja_env.globals.update(formatting.template_globals())

    # One proxy (nginx) sits in front in the documented deployment; its forwarded headers are
    # believed only when the request comes from it. The prefix is never taken from a header.
    app.wsgi_app = security.RejectUnknownMethods(
        security.TrustedProxyFix(app.wsgi_app, lambda: app.config["TRUSTED_PROXIES"]))
    return app


def _version_static_urls(app: Flask) -> None:
    """Static URLs carry a hash of the file (?v=...), so a proxy may let browsers cache them for a year."""
    import hashlib

    versions: dict[str, str | None] = {}

    def version(filename: str) -> str | None:
        if filename not in versions:
            try:
                data = (Path(app.static_folder) / filename).read_bytes()
                versions[filename] = hashlib.sha256(data).hexdigest()[:12]
            except OSError:
                versions[filename] = None
        return versions[filename]

    @app.url_defaults
    def add_version(endpoint: str, values: dict) -> None:
        if endpoint == "static" and "filename" in values and "v" not in values:
            found = version(values["filename"])
            if found:
                values["v"] = found


def _configure_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
