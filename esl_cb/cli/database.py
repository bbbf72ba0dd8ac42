"""esl-cb db: the schema (Alembic migrations)."""
from __future__ import annotations

import click

from .common import (
    db_option,
    open_store,
)


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@db_option
@click.option("--revision", default="head", show_default=True)
def db_upgrade(db: str | None, revision: str) -> None:
    """Create or update the tables and the reporting/billing views.

    \b
    Example:
      esl-cb db upgrade --db postgresql+psycopg2://postgres@127.0.0.1/eslcb
    """
    from esl_cb.db.migrate import upgrade

    open_store(db).close()
    upgrade(db, revision)
    click.echo(f"database is at revision {revision}")
