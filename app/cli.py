"""Command-line tasks (`flask --app wsgi ...`): init-db, users and tokens. They call the same account code as the pages."""
from __future__ import annotations

import sys
from typing import Callable

import click
from flask import Flask
from flask_migrate import upgrade

from app.errors import AppError


def _fail(exc: AppError) -> None:
    raise click.ClickException(str(exc))


def _carry_out(action: Callable[[], object], done: str) -> None:
    """Do what a command asks, and say so on stderr; a refusal ends the command with its message."""
    try:
        action()
    except AppError as exc:
        _fail(exc)
    click.echo(done, err=True)


def register(app: Flask) -> None:
    from app.accounts import service as accounts

    @app.cli.command("init-db")
    def init_db() -> None:
        """Apply every migration, create the sample dataset if missing, and the first admin on a fresh database."""
        from app.datasets.sample import SAMPLE_KEY, ensure_sample_dataset

        upgrade()
        created = ensure_sample_dataset()
        click.echo(f"database ready; sample dataset {SAMPLE_KEY} {'created' if created else 'present'}")
        password = accounts.ensure_first_admin()
        if password:
            click.echo(f"first user created: sign in as admin with password {password}")

    stored = click.Group("artifacts", help="The artifact store: collect old checkpoints.")

    @stored.command("gc")
    @click.option("--older-than-days", type=float, default=None,
                  help="runs finished longer ago than this (default: TUNIX_ARTIFACTS_CHECKPOINT_RETENTION_DAYS)")
    @click.option("--dry-run", is_flag=True, help="say what would be deleted, delete nothing")
    def collect_garbage(older_than_days: float | None, dry_run: bool) -> None:
        """Delete the stored checkpoints of finished runs but the last of each; models and results stay."""
        from flask import current_app

        from app.runs import retention
        from app.web.formatting import format_bytes

        report = retention.collect(current_app.config, older_than_days, dry_run)
        verb = "would free" if dry_run else "freed"
        click.echo(f"{report.runs_examined} finished runs examined; {report.checkpoints_deleted} checkpoints "
                   f"{'to delete' if dry_run else 'deleted'}; {verb} {format_bytes(report.bytes_freed)} "
                   f"({report.bytes_freed} bytes)")
        for failure in report.failures:
            click.echo(f"not collected: {failure}", err=True)
        if report.failures:
            sys.exit(1)

    app.cli.add_command(stored)

    users = click.Group("users", help="Create users, set their passwords, end their sessions, (de)activate them.")
    tokens = click.Group("tokens", help="Create API tokens.")

    @users.command("create")
    @click.argument("name")
    @click.option("--admin", is_flag=True, help="may act on every user's runs")
    def create_user(name: str, admin: bool) -> None:
        """Create a user; prints its generated password alone on stdout."""
        try:
            _, password = accounts.create_user(name, admin=admin)
        except AppError as exc:
            _fail(exc)
        click.echo(password)

    @users.command("set-password")
    @click.argument("name")
    def set_password(name: str) -> None:
        """Set a user's password, read from stdin (one line)."""
        password = sys.stdin.readline().rstrip("\r\n")
        _carry_out(lambda: accounts.set_password(name, password), f"password of {name} changed; their sessions ended")

    @users.command("sign-out")
    @click.argument("name")
    def sign_out(name: str) -> None:
        """End every browser session of a user, wherever it is (their API tokens keep working)."""
        user = accounts.find_user(name)
        if user is None:
            raise click.ClickException(f"no user {name!r}")
        accounts.end_sessions(user.id)
        click.echo(f"every session of {name} ended", err=True)

    def set_active(name: str, active: bool) -> None:
        _carry_out(lambda: accounts.set_active(name, active), f"{name} {'active again' if active else 'deactivated'}")

    @users.command("deactivate")
    @click.argument("name")
    def deactivate(name: str) -> None:
        """Stop a user: sign-in refused, sessions ended, API tokens refused (kept, for reactivation)."""
        set_active(name, False)

    @users.command("activate")
    @click.argument("name")
    def activate(name: str) -> None:
        """Let a deactivated user sign in and use their tokens again."""
        set_active(name, True)

    @tokens.command("create")
    @click.argument("name")
    @click.option("--label", default="", help="what the token is for")
    def create_token(name: str, label: str) -> None:
        """Create an API token for a user; prints the token alone on stdout (it is not stored)."""
        user = accounts.find_user(name)
        if user is None:
            raise click.ClickException(f"no user {name!r}")
        try:
            _, secret = accounts.create_token(user, label)
        except AppError as exc:
            _fail(exc)
        click.echo(secret)

    app.cli.add_command(users)
    app.cli.add_command(tokens)
