"""The claim's cost as the queue grows (issue 18, Performance): the database time of one claim with
10, 10,000 and 100,000 callbacks waiting, before (esl_cb_claim reading the view claim_queue, as of
migration 0007) and after (migration 0010: the queue heads by index), in one run; and the EXPLAIN
ANALYZE of the claim's query at the largest size.

Each claim runs in a transaction that is rolled back (the queue stays as it was); its time is the
wall time of the SELECT esl_cb_claim(...) round trip on a local connection. Needs PostgreSQL on
127.0.0.1:5432 (or $ESL_CB_TEST_PG, as the tests); makes and drops its own database.

    .venv/bin/python -m benchmarks.claim_scale [--claims 200] [--sizes 10,10000,100000]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import statistics
import time

import psycopg2

from benchmarks.common import REPO
from esl_cb.db.migrate import upgrade

MIGRATION = REPO / "migrations" / "versions" / "0010_claim_by_index.py"
# The server the tests use (tests/fixtures.py), its admin database.
PG = os.environ.get("ESL_CB_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
AGENTS = 20
SKILLS = ("support", "sales", "billing")
# The view's claim costs seconds at 100,000: fewer samples of it (the new claim always gets --claims).
VIEW_CLAIMS_AT = {10: 200, 10_000: 20, 100_000: 5}

# Callbacks waiting a day after an outage: three skills; constant, accelerating and capped priorities.
FILL = """
INSERT INTO contacts (direction, state, script, original_ani, original_dnis, ani, dnis, skill_id,
                      priority_initial, priority_acceleration, priority_max, callback_requested, call_delay_sec,
                      attempts, arrived_at, queued_at, callback_requested_at, callback_number)
SELECT 'inbound', 'callback_queued', 'bench', '+1312555' || lpad((g %% 10000)::text, 4, '0'), '3125557000',
       '+1312555' || lpad((g %% 10000)::text, 4, '0'), '3125557000',
       (SELECT id FROM skills WHERE name = (ARRAY['support', 'sales', 'billing'])[1 + g %% 3]),
       (ARRAY[10, 0, 5, 20])[1 + g %% 4], (ARRAY[0, 2, 0.5, 0])[1 + g %% 4], (ARRAY[10, 30, 60, 20])[1 + g %% 4],
       true, 0, 0, t, t, t, '+1312555' || lpad((g %% 10000)::text, 4, '0')
  FROM generate_series(1, %(n)s) AS g,
       LATERAL (SELECT now() - make_interval(secs => (g * 7919 %% 86400)::float8)) AS q(t)
"""


def _admin(dbname: str | None = None):
    return psycopg2.connect(PG if dbname is None else f"{PG.rsplit('/', 1)[0]}/{dbname}")


def _migration():
    spec = importlib.util.spec_from_file_location("claim_migration", MIGRATION)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _staff(cur) -> None:
    for s in SKILLS:
        cur.execute("INSERT INTO skills (name) VALUES (%s) ON CONFLICT DO NOTHING", (s,))
    for i in range(AGENTS):
        cur.execute("""INSERT INTO agents (name, dial_string, state, state_changed_at, available_since)
                       VALUES (%s, %s, 'Available', now(), now() - make_interval(secs => %s)) RETURNING id""",
                    (f"agent-{i}", f"user/{1000 + i}", float(i)))
        aid = cur.fetchone()[0]
        for s in (SKILLS[i % 3], SKILLS[(i + 1) % 3]):
            cur.execute("INSERT INTO agent_skills (agent_id, skill_id) SELECT %s, id FROM skills WHERE name = %s",
                        (aid, s))


def _times(conn, function: str, claims: int) -> list[float]:
    out = []
    with conn.cursor() as cur:
        for i in range(claims):
            t = time.perf_counter()
            cur.execute(f"SELECT * FROM {function}(now(), %s, 'bench')", (f"leg-{i}",))
            row = cur.fetchone()
            out.append((time.perf_counter() - t) * 1000)
            assert row is not None and row[0] is not None, "nothing claimed"
            conn.rollback()
    return out


def _stats(ms: list[float]) -> str:
    ms = sorted(ms)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    return f"p50 {statistics.median(ms):8.2f} ms  p99 {p99:8.2f} ms  (n={len(ms)})"


def _head_query(claim_sql: str) -> str:
    """The claim's query (the best queue head), as the function runs it with nothing skipped yet."""
    body = claim_sql[claim_sql.index("WITH RECURSIVE"):]
    body = body[:body.index("LIMIT 1;") + len("LIMIT 1")]
    body = re.sub(r"\n\s*INTO c\n", "\n", body)
    return (body.replace("v_skipped", "'{}'::bigint[]").replace("v_full", "'{}'::integer[]")
            .replace("p_controller", "'bench'"))


def _explain(conn, sql: str) -> str:
    with conn.cursor() as cur:
        cur.execute("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql)
        plan = "\n".join(r[0] for r in cur.fetchall())
    conn.rollback()
    return plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--claims", type=int, default=200)
    ap.add_argument("--sizes", default="10,10000,100000")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    mig = _migration()
    name = f"esl_cb_claim_scale_{os.getpid()}"
    admin = _admin()
    admin.autocommit = True
    admin.cursor().execute(f"CREATE DATABASE {name}")
    try:
        upgrade(f"{PG.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg2://')}/{name}")
        conn = _admin(name)
        with conn.cursor() as cur:
            # Before: the claim of migration 0007 (it reads the view), under another name.
            cur.execute(mig.PREVIOUS_CLAIM.replace("FUNCTION esl_cb_claim(", "FUNCTION esl_cb_claim_view("))
            _staff(cur)
        conn.commit()
        print(f"{AGENTS} agents Available over {len(SKILLS)} skills; claims rolled back\n")
        for n in sizes:
            with conn.cursor() as cur:
                cur.execute("DELETE FROM contacts")
                cur.execute(FILL, {"n": n})
            conn.commit()
            conn.autocommit = True
            conn.cursor().execute("ANALYZE contacts; ANALYZE agents; ANALYZE agent_skills")
            conn.autocommit = False
            before = _times(conn, "esl_cb_claim_view", min(args.claims, VIEW_CLAIMS_AT.get(n, args.claims)))
            after = _times(conn, "esl_cb_claim", args.claims)
            print(f"{n:>7} waiting  before (view)  {_stats(before)}")
            print(f"{n:>7} waiting  after (0010)   {_stats(after)}")
        print(f"\nEXPLAIN ANALYZE of the claim's query (the best queue head) at {sizes[-1]} waiting:\n")
        print(_explain(conn, _head_query(mig.CLAIM)))
        print("\nand of the agent's (the idle longest with the skill, locked):\n")
        print(_explain(conn, """SELECT a.id FROM agents a JOIN agent_skills k ON k.agent_id = a.id
                                 AND k.skill_id = (SELECT id FROM skills WHERE name = 'support')
                                WHERE a.state = 'Available'
                                  AND (a.offer_not_before IS NULL OR a.offer_not_before <= now())
                                ORDER BY coalesce(a.available_since, now()), a.id LIMIT 1
                                  FOR UPDATE OF a SKIP LOCKED"""))
        print(f"\nbefore: the view's query at {sizes[-1]} waiting (summary):\n")
        plan = _explain(conn, "SELECT * FROM claim_queue q WHERE q.held_by IS NULL OR q.held_by = 'bench' LIMIT 1")
        print("\n".join(line for line in plan.splitlines() if "Time" in line or "Sort Method" in line))
        conn.close()
    finally:
        admin.cursor().execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


if __name__ == "__main__":
    main()
