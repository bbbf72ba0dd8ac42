"""Issue 17 in the database: the state table enforced, the queue defined once.

1. The state table (item 5). `contact_transitions` holds the contact transitions of
   esl_cb/domain/states.py as of this migration (with connected -> queued: a live caller whose bridge
   failed goes back keeping their place), and two triggers on `contacts` refuse any change of state
   the table does not list and any new contact in a state not listed from 'new' (arrived, or
   callback_queued for a callback an operator books). Whatever writes the state (StoreBase._move, the
   one-statement PostgreSQL paths, the SQL functions, an operator's SQL) is held to the same table.
   A refusal: PostgreSQL raises SQLSTATE 23T01 (class 23, integrity constraint violation) with
   "contact <id>: <from> -> <to> is not in contact_transitions"; SQLite (its RAISE takes a fixed text)
   aborts the statement with a message that starts "esl_cb 23T01:". esl_cb/db/base.py turns both into
   IllegalTransition. The table is frozen here: a later change of the domain table needs a migration
   that changes these rows (tests/test_transitions.py compares the two). On SQLite, a later
   batch_alter_table("contacts") rebuilds the table and drops its triggers: it must create them again.
2. The queue, defined once. The view claim_queue holds the order (SPEC 3) and who may be offered;
   esl_cb_claim reads it on PostgreSQL, esl_cb/db/dispatch.py on SQLite.

Revision ID: 0007
Revises: 0006
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# (from, to); 'new' is a contact being inserted.
TRANSITIONS = [
    ("new", "arrived"), ("new", "callback_queued"),
    ("arrived", "queued"), ("arrived", "ended"),
    ("queued", "offered"), ("queued", "callback_queued"), ("queued", "ended"),
    ("offered", "queued"), ("offered", "callback_queued"), ("offered", "connected"), ("offered", "accepted"),
    ("offered", "ended"),
    ("callback_queued", "offered"), ("callback_queued", "ended"),
    ("accepted", "dialling"), ("accepted", "connected"), ("accepted", "callback_queued"), ("accepted", "ended"),
    ("dialling", "connected"), ("dialling", "callback_queued"), ("dialling", "ended"),
    ("connected", "ended"), ("connected", "callback_queued"), ("connected", "queued"),
]

PG_CHECK = """
CREATE FUNCTION esl_cb_check_contact_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NOT EXISTS (SELECT 1 FROM contact_transitions WHERE from_state = 'new' AND to_state = NEW.state) THEN
            RAISE EXCEPTION 'contact %: a new contact cannot start as % (contact_transitions has no new -> %)',
                            NEW.id, NEW.state, NEW.state USING ERRCODE = '23T01';
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM contact_transitions WHERE from_state = OLD.state AND to_state = NEW.state) THEN
        RAISE EXCEPTION 'contact %: % -> % is not in contact_transitions', OLD.id, OLD.state, NEW.state
              USING ERRCODE = '23T01';
    END IF;
    RETURN NEW;
END
$$
"""
PG_TRIGGERS = [
    "CREATE TRIGGER contacts_initial_state BEFORE INSERT ON contacts FOR EACH ROW "
    "EXECUTE FUNCTION esl_cb_check_contact_state()",
    "CREATE TRIGGER contacts_state_transition BEFORE UPDATE OF state ON contacts FOR EACH ROW "
    "WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION esl_cb_check_contact_state()",
]
SQLITE_TRIGGERS = [
    """CREATE TRIGGER contacts_initial_state BEFORE INSERT ON contacts FOR EACH ROW
       WHEN NOT EXISTS (SELECT 1 FROM contact_transitions WHERE from_state = 'new' AND to_state = NEW.state)
       BEGIN SELECT RAISE(ABORT, 'esl_cb 23T01: a new contact cannot start in this state (contact_transitions)'); END""",
    """CREATE TRIGGER contacts_state_transition BEFORE UPDATE OF state ON contacts FOR EACH ROW
       WHEN OLD.state IS NOT NEW.state
        AND NOT EXISTS (SELECT 1 FROM contact_transitions WHERE from_state = OLD.state AND to_state = NEW.state)
       BEGIN SELECT RAISE(ABORT, 'esl_cb 23T01: this change of state is not in contact_transitions'); END""",
]


# -- the queue, defined once (issue 17): PostgreSQL's esl_cb_claim and SQLite's claim both read this view.
# Each row is a (waiting contact, available agent with its skill) pair that may be offered now, in SPEC 3
# order: effective priority (esl_cb.domain.queue.Priority.effective) descending, first queued, contact
# id, the agent idle longest, agent id. held_by: the controller that holds a live caller's call (only it
# can bridge them); a callback is anyone's. On PostgreSQL the view locks the pair it hands out and skips
# pairs another claim holds (SELECT ... LIMIT 1 from it takes the best free pair), and reads the database's
# clock: every controller sees the same queue whatever its host's clock says.
CLAIM_QUEUE = """
CREATE VIEW claim_queue AS
SELECT c.id AS contact_id, c.state AS contact_state, c.caller_uuid, c.callback_number, c.original_ani,
       s.name AS skill, a.id AS agent_id, a.name AS agent_name, a.dial_string,
       CASE WHEN c.state = 'queued' THEN NULLIF(c.controller_id, '') END AS held_by
  FROM contacts c
  JOIN skills s ON s.id = c.skill_id
  JOIN agent_skills k ON k.skill_id = c.skill_id
  JOIN agents a ON a.id = k.agent_id
 WHERE a.state = 'Available'
   AND (a.offer_not_before IS NULL OR a.offer_not_before <= {now})
   AND (c.state = 'queued' OR (c.state = 'callback_queued' AND s.callbacks_open
                               AND (c.not_before IS NULL OR c.not_before <= {now})
                               AND (c.expire_at IS NULL OR c.expire_at > {now})))
   AND (c.retry_at IS NULL OR c.retry_at <= {now})
 ORDER BY {least}(c.priority_initial + c.priority_acceleration * {greatest}({minutes_waited}, 0),
                  {greatest}(c.priority_max, c.priority_initial)) DESC,
          c.queued_at, c.id, coalesce(a.available_since, {now}), a.id
{lock}
"""
DIALECT = {
    "postgresql": dict(now="now()", minutes_waited="date_part('epoch', now() - c.queued_at) / 60.0",
                       least="least", greatest="greatest", lock="FOR UPDATE OF c, a SKIP LOCKED"),
    # SQLAlchemy stores SQLite's times as 'YYYY-MM-DD HH:MM:SS.ffffff' (UTC here): 'now' in that shape.
    "sqlite": dict(now="strftime('%Y-%m-%d %H:%M:%f000', 'now')",
                   minutes_waited="(julianday('now') - julianday(c.queued_at)) * 1440.0",
                   least="min", greatest="max", lock=""),
}

CLAIM = """
CREATE OR REPLACE FUNCTION esl_cb_claim(p_now timestamptz, p_leg text, p_controller text)
RETURNS TABLE (contact_id bigint, contact_state text, caller_uuid text, callback_number text,
               original_ani text, skill text, agent_id integer, agent_name text, dial_string text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    -- claim_queue orders the queue, says who may be offered, and locks the pair it returns.
    SELECT * INTO r FROM claim_queue q WHERE q.held_by IS NULL OR q.held_by = p_controller LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE agents SET state = 'Offered', state_changed_at = p_now, contact_id = r.contact_id, leg_uuid = p_leg,
                      controller_id = p_controller
     WHERE id = r.agent_id AND state = 'Available';
    UPDATE contacts SET state = 'offered', offered_at = p_now, agent_id = r.agent_id, agent_leg_uuid = p_leg,
                        controller_id = p_controller
     WHERE id = r.contact_id AND state IN ('queued', 'callback_queued');
    RETURN QUERY SELECT r.contact_id, r.contact_state::text, r.caller_uuid::text, r.callback_number::text,
                        r.original_ani::text, r.skill::text, r.agent_id, r.agent_name::text, r.dial_string::text;
END
$$
"""

# For the downgrade: the claim of migration 0006.
PREVIOUS_CLAIM = """
CREATE OR REPLACE FUNCTION esl_cb_claim(p_now timestamptz, p_leg text, p_controller text)
RETURNS TABLE (contact_id bigint, contact_state text, caller_uuid text, callback_number text,
               original_ani text, skill text, agent_id integer, agent_name text, dial_string text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
BEGIN
    -- The best waiting contact that an available agent can take, and the agent idle longest.
    -- A callback waits for its skill's opening hours and its not-before time, and is never offered
    -- once expired. SKIP LOCKED: another controller claiming at the same moment takes the next pair.
    SELECT c.id, c.state, c.caller_uuid, c.callback_number, c.original_ani, s.name AS skill,
           a.id AS aid, a.name AS aname, a.dial_string
      INTO r
      FROM contacts c
      JOIN skills s ON s.id = c.skill_id
      JOIN agent_skills k ON k.skill_id = c.skill_id
      JOIN agents a ON a.id = k.agent_id
     WHERE a.state = 'Available'
       AND (a.offer_not_before IS NULL OR a.offer_not_before <= p_now)
       AND (c.state = 'queued' OR (c.state = 'callback_queued' AND s.callbacks_open
                                   AND (c.not_before IS NULL OR c.not_before <= p_now)
                                   AND (c.expire_at IS NULL OR c.expire_at > p_now)))
       AND (c.retry_at IS NULL OR c.retry_at <= p_now)
     ORDER BY esl_cb_effective_priority(c.priority_initial, c.priority_acceleration, c.priority_max,
                                        c.queued_at, p_now) DESC,
              c.queued_at, c.id, coalesce(a.available_since, p_now), a.id
     LIMIT 1
       FOR UPDATE OF c, a SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE agents SET state = 'Offered', state_changed_at = p_now, contact_id = r.id, leg_uuid = p_leg,
                      controller_id = p_controller
     WHERE id = r.aid;
    UPDATE contacts SET state = 'offered', offered_at = p_now, agent_id = r.aid, agent_leg_uuid = p_leg,
                        controller_id = p_controller
     WHERE id = r.id;
    RETURN QUERY SELECT r.id, r.state::text, r.caller_uuid::text, r.callback_number::text, r.original_ani::text,
                        r.skill::text, r.aid, r.aname::text, r.dial_string::text;
END
$$
"""



def upgrade() -> None:
    table = op.create_table(
        "contact_transitions",
        sa.Column("from_state", sa.String(16), primary_key=True),
        sa.Column("to_state", sa.String(16), primary_key=True),
    )
    op.bulk_insert(table, [{"from_state": a, "to_state": b} for a, b in TRANSITIONS])
    op.execute(CLAIM_QUEUE.format(**DIALECT[op.get_bind().dialect.name]))
    if _pg():
        op.execute(PG_CHECK)
        for sql in PG_TRIGGERS:
            op.execute(sql)
        op.execute(CLAIM)
    else:
        for sql in SQLITE_TRIGGERS:
            op.execute(sql)


def downgrade() -> None:
    if _pg():
        op.execute(PREVIOUS_CLAIM)
    op.execute("DROP VIEW claim_queue")
    op.execute("DROP TRIGGER contacts_state_transition" + (" ON contacts" if _pg() else ""))
    op.execute("DROP TRIGGER contacts_initial_state" + (" ON contacts" if _pg() else ""))
    if _pg():
        op.execute("DROP FUNCTION esl_cb_check_contact_state()")
    op.drop_table("contact_transitions")


def _pg() -> bool:
    return op.get_bind().dialect.name == "postgresql"
