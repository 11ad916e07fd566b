"""Command-line tasks: `flask --app wsgi init-db` migrates the database and adds the sample dataset."""
from __future__ import annotations

import click
from flask import Flask
from flask_migrate import upgrade


def register(app: Flask) -> None:
    @app.cli.command("init-db")
    def init_db() -> None:
        """Apply every migration, then create the sample dataset if it is missing."""
        from app.datasets.sample import SAMPLE_KEY, ensure_sample_dataset

        upgrade()
        created = ensure_sample_dataset()
        click.echo(f"database ready; sample dataset {SAMPLE_KEY} {'created' if created else 'present'}")
