"""Migrations are code: head matches the models, and down/up round-trips (real PostgreSQL)."""
from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from esl_cb.db.migrate import downgrade, upgrade
from esl_cb.db.models import Base

from .fixtures import create_database, drop_database


def test_upgrade_matches_models_and_round_trips():
    url = create_database()
    try:
        upgrade(url)
        engine = create_engine(url)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == []
            views = set(inspect(conn).get_view_names())
            assert {"reporting_contacts", "billing_legs"} <= views
            assert _functions(conn) == {"esl_cb_claim", "esl_cb_complete", "esl_cb_effective_priority"}
        downgrade(url, "base")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == {"alembic_version"}
            assert _functions(conn) == set()
        upgrade(url)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM reporting_contacts")).scalar() == 0
        engine.dispose()
    finally:
        drop_database(url)


def _functions(conn) -> set[str]:
    return set(conn.execute(text("SELECT proname FROM pg_proc WHERE proname LIKE 'esl_cb%'")).scalars())


def test_sqlite_default_database_migrates(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        assert {"contacts", "legs", "agents"} <= set(inspect(conn).get_table_names())
        assert conn.execute(text("SELECT count(*) FROM billing_legs")).scalar() == 0
    engine.dispose()
