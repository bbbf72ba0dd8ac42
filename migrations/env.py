"""Alembic environment: the URL comes from esl-cb's own configuration (esl-cb db upgrade)."""
from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from esl_cb.db.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata,
                          render_as_batch=connection.dialect.name == "sqlite")
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
