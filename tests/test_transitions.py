"""The state table, enforced by the database (migration 0007): contact_transitions holds
domain/states.py's CONTACT_TRANSITIONS as of that migration, and a trigger on `contacts` refuses
any other change of state and any other initial state, whichever statement writes it (the
one-statement PostgreSQL paths and the SQL functions bypass StoreBase._move's own check).

A refusal reaches Python as IllegalTransition (esl_cb/db/base.py); on PostgreSQL its SQLSTATE is
23T01 (class 23, integrity constraint violation)."""
from __future__ import annotations

import re
from collections import deque
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import text

from esl_cb.db.base import IllegalTransition
from esl_cb.db.store import Store
from esl_cb.domain.states import CONTACT_INITIAL_STATES, CONTACT_TRANSITIONS, ContactState

from .fixtures import DIALECTS, migrated_store

STATES = [s.value for s in ContactState]
LEGAL = {(a.value, b.value) for a, tos in CONTACT_TRANSITIONS.items() for b in tos}
DB_DIR = Path(__file__).resolve().parent.parent / "esl_cb" / "db"


@pytest.fixture(params=DIALECTS)
def store(request, tmp_path):
    with migrated_store(request.param, tmp_path) as st:
        yield st


def _insert(conn, state: str) -> int:
    return conn.execute(text(
        "INSERT INTO contacts (direction, state, script, original_ani, original_dnis, ani, dnis, priority_initial, "
        "priority_acceleration, priority_max, callback_requested, call_delay_sec, attempts, arrived_at) "
        "VALUES ('inbound', :s, 't', '', '', '', '', 0, 0, 0, false, 0, 0, CURRENT_TIMESTAMP) RETURNING id"),
        {"s": state}).scalar()


def _path_to(state: str) -> list[str]:
    """The shortest walk through the domain table from an initial state to `state`."""
    starts = [s.value for s in CONTACT_INITIAL_STATES]
    seen = {s: [s] for s in starts}
    todo = deque(starts)
    while todo:
        frm = todo.popleft()
        for a, b in sorted(LEGAL):
            if a == frm and b not in seen:
                seen[b] = seen[frm] + [b]
                todo.append(b)
    return seen[state]


def _contact_in(conn, state: str) -> int:
    walk = _path_to(state)
    cid = _insert(conn, walk[0])
    for s in walk[1:]:
        conn.execute(text("UPDATE contacts SET state = :s WHERE id = :id"), {"s": s, "id": cid})
    return cid


def test_the_frozen_table_is_the_domain_table(store):
    """A change to the domain table needs a migration that changes contact_transitions (and back)."""
    with store.engine.connect() as conn:
        rows = set(conn.execute(text("SELECT from_state, to_state FROM contact_transitions")).all())
    assert {(a, b) for a, b in rows if a != "new"} == LEGAL
    assert {b for a, b in rows if a == "new"} == {s.value for s in CONTACT_INITIAL_STATES}


def test_every_legal_transition_passes_and_every_other_is_refused(store):
    refused, passed = set(), set()
    for frm in STATES:
        for to in STATES + ["bogus"]:
            with store.engine.begin() as conn:
                cid = _contact_in(conn, frm)
            try:
                with store.engine.begin() as conn:
                    conn.execute(text("UPDATE contacts SET state = :s WHERE id = :id"), {"s": to, "id": cid})
                passed.add((frm, to))
            except IllegalTransition as e:
                refused.add((frm, to))
                if store.engine.dialect.name == "postgresql":     # SQLite's RAISE takes a fixed text only
                    assert f"contact {cid}: {frm} -> {to} is not in contact_transitions" in str(e)
            with store.engine.connect() as conn:
                now = conn.execute(text("SELECT state FROM contacts WHERE id = :id"), {"id": cid}).scalar()
            assert now == (to if (frm, to) in passed else frm)
    same = {(s, s) for s in STATES}                     # not a change of state: other columns may change
    assert passed == LEGAL | same
    assert refused == {(a, b) for a in STATES for b in STATES + ["bogus"]} - LEGAL - same


def test_a_contact_starts_only_as_arrived_or_a_scheduled_callback(store):
    for state in STATES + ["bogus"]:
        if state in ("arrived", "callback_queued"):
            with store.engine.begin() as conn:
                _insert(conn, state)
            continue
        with pytest.raises(IllegalTransition, match="contact_transitions"):
            with store.engine.begin() as conn:
                _insert(conn, state)
    with store.engine.connect() as conn:
        assert sorted(conn.execute(text("SELECT state FROM contacts")).scalars()) == ["arrived", "callback_queued"]


def test_the_refusal_has_its_own_sqlstate_on_postgresql(pg_url):
    store = Store(pg_url)
    with store.engine.begin() as conn:
        cid = _contact_in(conn, "ended")
    store.close()
    raw = psycopg2.connect(pg_url.replace("+psycopg2", ""))
    try:
        with pytest.raises(psycopg2.IntegrityError) as e, raw.cursor() as cur:
            cur.execute("UPDATE contacts SET state = 'queued' WHERE id = %s", (cid,))
        assert e.value.pgcode == "23T01"
        assert e.value.diag.message_primary == f"contact {cid}: ended -> queued is not in contact_transitions"
    finally:
        raw.close()


def test_the_stores_own_moves_get_the_same_error(store):
    """_move checks the domain table before the database does: the same exception either way."""
    with store.engine.begin() as conn:
        cid = _contact_in(conn, "queued")
        with pytest.raises(IllegalTransition, match=f"contact {cid}: queued -> accepted is not a legal transition"):
            store._move(conn, cid, [ContactState.QUEUED], ContactState.ACCEPTED, "test")


# -- every state written in SQL, against the table ---------------------------------------------------
_STRING = re.compile(r'"""(.*?)"""', re.S)
_GUARD = re.compile(r"\b(?:\w+\.)?state\s*(=|IN|<>|!=)\s*(\('[^)]*\)|'\w+')", re.I)


def _statements(sql: str, verb: str) -> list[str]:
    """Each `UPDATE contacts ...` / `INSERT INTO contacts ...` in a text, up to the end of its statement
    (a semicolon, or the parenthesis that closes its CTE)."""
    out = []
    for m in re.finditer(verb, sql, re.I):
        depth, end = 0, len(sql)
        for i in range(m.end(), len(sql)):
            ch = sql[i]
            depth += ch == "("
            if ch == ")":
                if depth == 0:
                    end = i
                    break
                depth -= 1
            if ch == ";" and depth == 0:
                end = i
                break
        out.append(sql[m.start():end])
    return out


def _states(literal: str) -> set[str]:
    return set(re.findall(r"'(\w+)'", literal))


def _written(sql: str) -> list[tuple[str, set[str], str]]:
    """(statement, states it may change from, state it writes) of each UPDATE and INSERT that writes a state."""
    found = []
    for stmt in _statements(sql, r"\bUPDATE\s+contacts\b"):
        head, where = (re.split(r"\bWHERE\b", stmt, maxsplit=1, flags=re.I) + [""])[:2]
        assignment = re.search(r"(?:\bSET\s+|,\s*)state\s*=\s*([^,\n]+)", head, re.I)
        if assignment is None:
            continue
        guards = [(op.upper(), _states(v)) for op, v in _GUARD.findall(where)]
        frm = set().union(*[s for op, s in guards if op in ("=", "IN")]) if guards else set()
        if any(op in ("<>", "!=") for op, _ in guards) or not frm:
            frm = {"(no literal guard)"}
        found.append((" ".join(stmt.split())[:80], frm, assignment.group(1).strip()))
    for stmt in _statements(sql, r"\bINSERT\s+INTO\s+contacts\b"):
        cols = re.search(r"\(([^)]*)\)", stmt).group(1).replace("\n", " ")
        values = re.search(r"\bVALUES\s*\((.*)\)", stmt, re.I | re.S).group(1)
        names = [c.strip() for c in cols.split(",")]
        items = [v.strip() for v in re.split(r",(?![^(]*\))", values)]
        found.append((" ".join(stmt.split())[:80], {"new"}, items[names.index("state")]))
    return found


def _db_sql() -> dict[str, str]:
    out = {}
    for path in sorted(DB_DIR.glob("*.py")):
        for i, s in enumerate(_STRING.findall(path.read_text())):
            if re.search(r"\b(UPDATE|INSERT\s+INTO)\s+contacts\b", s, re.I):
                out[f"{path.name} text {i}"] = s
    return out


def _function_sql(store) -> dict[str, str]:
    """The SQL functions as the migrations left them at head (the latest version of each)."""
    with store.engine.connect() as conn:
        return dict(conn.execute(text("SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid) FROM pg_proc p "
                                      "WHERE proname LIKE 'esl_cb%'")).all())


def test_every_state_written_in_sql_is_in_the_table(pg_url):
    store = Store(pg_url)
    try:
        sources = {**_db_sql(), **_function_sql(store)}
    finally:
        store.close()
    seen, wrong = set(), []
    for where, sql in sources.items():
        for stmt, frm, to in _written(sql):
            seen.add(where.split(" ")[0].split("(")[0])
            if not re.fullmatch(r"'\w+'", to):
                wrong.append(f"{where}: writes a state that is not a literal ({to}): {stmt}")
                continue
            to = to.strip("'")
            for f in sorted(frm):
                if f == "new" and to not in {s.value for s in CONTACT_INITIAL_STATES}:
                    wrong.append(f"{where}: inserts a contact as {to}: {stmt}")
                elif f != "new" and (f, to) not in LEGAL:
                    wrong.append(f"{where}: {f} -> {to} is not in the table: {stmt}")
    assert wrong == []
    # The scan finds them: arrive and queue, accept, the customer's answer, the claim, the completion.
    assert seen >= {"contacts.py", "dispatch.py", "dialling.py", "esl_cb_claim", "esl_cb_complete"}


def test_the_scanner_reads_guards_and_inserts():
    """The scan above is only as good as its parser: it must see these."""
    sql = """WITH c AS (UPDATE contacts SET state = 'connected', x = 1
                         WHERE id = :id AND contacts.state IN ('dialling', 'accepted') RETURNING id),
              i AS (INSERT INTO contacts (direction, state, arrived_at) VALUES ('inbound', 'arrived', now()))
             UPDATE contacts SET state = 'ended' WHERE id = 1 AND state <> 'ended';
             UPDATE contacts SET last_error = 'x' WHERE state = 'queued'"""
    assert [(frm, to) for _, frm, to in _written(sql)] == [
        ({"dialling", "accepted"}, "'connected'"), ({"(no literal guard)"}, "'ended'"), ({"new"}, "'arrived'")]
