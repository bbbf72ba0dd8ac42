"""Migrations are code: head matches the models, down/up round-trips on both dialects, and each
migration is frozen (it never imports the live code, whose models and SQL move on)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from esl_cb.db.migrate import downgrade, upgrade
from esl_cb.db.models import Base

from .fixtures import create_database, drop_database

VERSIONS = Path(__file__).resolve().parent.parent / "migrations" / "versions"
VIEWS = {"reporting_contacts", "billing_legs", "agent_day_states", "agent_day_report"}
# Both dialects; the agents' ones (migration 0011): every state change kept, a pending state applied.
TRIGGERS = {"contacts_initial_state", "contacts_state_transition", "agents_history_insert", "agents_history_state",
            "agents_pending_state"}
# PostgreSQL only (migration 0008): the live events and the webhooks' outbox.
PG_TRIGGERS = {"contacts_event_insert", "contacts_event_state", "agents_event_state", "contacts_outcome_outbox"}
FUNCTIONS = {"esl_cb_claim", "esl_cb_complete", "esl_cb_effective_priority", "esl_cb_check_contact_state",
             "esl_cb_notify_event", "esl_cb_outcome_to_outbox", "esl_cb_agent_history", "esl_cb_apply_pending_state",
             "esl_cb_event", "esl_cb_book"}


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrated.db'}"
        return
    url = create_database()
    yield url
    drop_database(url)


def _schema_diff(engine) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


def _functions(conn) -> set[str]:
    if conn.dialect.name != "postgresql":
        return set()
    return set(conn.execute(text("SELECT proname FROM pg_proc WHERE proname LIKE 'esl_cb%'")).scalars())


def _triggers(conn) -> set[str]:
    if conn.dialect.name == "postgresql":
        return set(conn.execute(text("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")).scalars())
    return set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars())


def test_upgrade_matches_models_and_round_trips(url):
    upgrade(url)
    engine = create_engine(url)
    try:
        assert _schema_diff(engine) == []
        with engine.connect() as conn:
            assert VIEWS <= set(inspect(conn).get_view_names())
            assert _triggers(conn) == TRIGGERS | (PG_TRIGGERS if conn.dialect.name == "postgresql" else set())
            if conn.dialect.name == "postgresql":
                assert _functions(conn) == FUNCTIONS
        downgrade(url, "base")
        with engine.connect() as conn:
            assert set(inspect(conn).get_table_names()) == {"alembic_version"}
            assert set(inspect(conn).get_view_names()) == set()
            assert _functions(conn) == set() and _triggers(conn) == set()
        upgrade(url)
        assert _schema_diff(engine) == []
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM reporting_contacts")).scalar() == 0
            assert conn.execute(text("SELECT count(*) FROM billing_legs")).scalar() == 0
    finally:
        engine.dispose()


def test_every_step_down_restores_the_schema_of_the_step_before(url):
    """Each downgrade leaves exactly what its previous revision's upgrade made (views included), so
    a downgrade that restores a view or a function from live code cannot pass unnoticed."""
    revisions = sorted(p.name.split("_", 1)[0] for p in VERSIONS.glob("0*.py"))
    engine = create_engine(url)
    try:
        snapshots = {}
        for rev in revisions:
            upgrade(url, rev)
            snapshots[rev] = _snapshot(engine)
        for previous in reversed(revisions[:-1]):
            downgrade(url, previous)
            assert _snapshot(engine) == snapshots[previous], f"downgrade to {previous}"
    finally:
        engine.dispose()


def _snapshot(engine) -> dict:
    """Tables with their columns, views with their definitions, and the SQL functions."""
    with engine.connect() as conn:
        insp = inspect(conn)
        tables = {t: sorted((c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t))
                  for t in insp.get_table_names()}
        views = {v: " ".join(insp.get_view_definition(v).split()) for v in insp.get_view_names()}
        views["(triggers)"] = sorted(_triggers(conn))
        functions = {}
        if conn.dialect.name == "postgresql":
            functions = dict(conn.execute(text("SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) "
                                               "FROM pg_proc p WHERE proname LIKE 'esl_cb%'")).all())
        return {"tables": tables, "views": views, "functions": functions}


def test_no_migration_imports_live_code():
    """Each migration freezes the schema and SQL of its day: no esl_cb import (models, SQL texts,
    domain tables) and no import of another migration (which may be edited for its own reasons)."""
    found = []
    for path in sorted(VERSIONS.glob("0*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in (
                    "import_module", "__import__"):
                names = ["(dynamic import)"]
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] not in ("sqlalchemy", "alembic",
                                                                                      "__future__")]
    assert found == []
