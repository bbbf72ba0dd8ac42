"""Agents the way contact centres run them (issue 20, part 1): wrap-up, delays after a miss, breaks
with a reason, a state asked for during a call, and every state change kept.

1. Per skill (with the familiar values of mod_callcenter's example configuration for the delays,
   and wrap-up off: see README "Agents: wrap-up, delays, breaks and their history") and per agent
   (NULL: the skill's): wrap_up_sec, reject_delay_sec, busy_delay_sec, no_answer_delay_sec,
   left_delay_sec (the agent hung up during CallDelaySec) and max_no_answer (misses in a row before
   OnBreak 'no_answer'; 0: never).
2. agents: state_reason (why Refused or OnBreak), state_until (when WrapUp or a delay ends),
   pending_state / pending_reason (a logout or break asked during a call), missed_in_a_row.
3. A pending state is applied by the database whenever the agent is freed (to Available, Refused or
   OnBreak from Offered, OnCall or WrapUp), whichever statement frees them: PostgreSQL a BEFORE
   trigger, SQLite (whose triggers cannot change NEW) an AFTER trigger that moves the row on.
4. agent_state_history: a row per state change (and one for a new agent), written by triggers on
   both dialects; the views agent_day_states (per agent, UTC day, state and reason: seconds) and
   agent_day_report (per agent and day: logged in, available, on call, wrap-up, on break, handled,
   missed, occupancy). An interval is counted on the day it started.
5. esl_cb_complete: the agent goes WrapUp for their wrap-up time (no claim then), Available with
   the next claim as before when it is 0; it returns the wrap-up's end.

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
# (column, default per skill): reject 10, busy 60, no answer 60, max 3 as mod_callcenter's example
# callcenter.conf.xml; an agent who hangs up during CallDelaySec is treated as one who rejects.
SETTINGS = [("wrap_up_sec", 0), ("reject_delay_sec", 10), ("busy_delay_sec", 60), ("no_answer_delay_sec", 60),
            ("left_delay_sec", 10), ("max_no_answer", 3)]
AGENT_COLUMNS = [("state_reason", sa.String(64)), ("state_until", TS), ("pending_state", sa.String(16)),
                 ("pending_reason", sa.String(64))]

FREE = "('Available', 'Refused', 'OnBreak')"
BUSY = "('Offered', 'OnCall', 'WrapUp')"

PG_PENDING = f"""
CREATE FUNCTION esl_cb_apply_pending_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A logout or break asked during a call: it starts when the agent is freed.
    IF NEW.pending_state IS NOT NULL AND NEW.state IN {FREE} AND OLD.state IN {BUSY} THEN
        NEW.state := NEW.pending_state;
        NEW.state_reason := NEW.pending_reason;
        NEW.state_until := NULL;
        NEW.pending_state := NULL;
        NEW.pending_reason := NULL;
    END IF;
    RETURN NEW;
END
$$
"""
PG_HISTORY = """
CREATE FUNCTION esl_cb_agent_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO agent_state_history (agent_id, agent_name, from_state, to_state, reason, at, contact_id)
    VALUES (NEW.id, NEW.name, CASE WHEN TG_OP = 'UPDATE' THEN OLD.state END, NEW.state,
            CASE WHEN NEW.state IN ('Refused', 'OnBreak', 'WrapUp') THEN NEW.state_reason END,
            coalesce(NEW.state_changed_at, now()),
            CASE WHEN TG_OP = 'UPDATE' THEN coalesce(NEW.contact_id, OLD.contact_id) END);
    RETURN NULL;
END
$$
"""
PG_TRIGGERS = [
    "CREATE TRIGGER agents_pending_state BEFORE UPDATE OF state ON agents FOR EACH ROW "
    "EXECUTE FUNCTION esl_cb_apply_pending_state()",
    "CREATE TRIGGER agents_history_insert AFTER INSERT ON agents FOR EACH ROW EXECUTE FUNCTION esl_cb_agent_history()",
    "CREATE TRIGGER agents_history_state AFTER UPDATE OF state ON agents FOR EACH ROW "
    "WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION esl_cb_agent_history()",
]
# SQLite: the pending state moves the row on after the update that freed the agent; that first move
# is not recorded (the history goes from the call straight to the pending state, as on PostgreSQL).
_SQLITE_APPLYING = f"(NEW.pending_state IS NOT NULL AND NEW.state IN {FREE} AND OLD.state IN {BUSY})"
SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER agents_pending_state AFTER UPDATE OF state ON agents FOR EACH ROW
    WHEN {_SQLITE_APPLYING}
    BEGIN
        INSERT INTO agent_state_history (agent_id, agent_name, from_state, to_state, reason, at, contact_id)
        VALUES (NEW.id, NEW.name, OLD.state, NEW.pending_state, NEW.pending_reason, NEW.state_changed_at,
                coalesce(NEW.contact_id, OLD.contact_id));
        UPDATE agents SET state = NEW.pending_state, state_reason = NEW.pending_reason, state_until = NULL,
                          pending_state = NULL, pending_reason = NULL
         WHERE id = NEW.id;
    END""",
    """CREATE TRIGGER agents_history_insert AFTER INSERT ON agents FOR EACH ROW
    BEGIN
        INSERT INTO agent_state_history (agent_id, agent_name, from_state, to_state, reason, at, contact_id)
        VALUES (NEW.id, NEW.name, NULL, NEW.state, NULL, NEW.state_changed_at, NULL);
    END""",
    f"""CREATE TRIGGER agents_history_state AFTER UPDATE OF state ON agents FOR EACH ROW
    WHEN OLD.state IS NOT NEW.state AND NOT {_SQLITE_APPLYING}
         AND NOT (OLD.pending_state IS NOT NULL AND NEW.pending_state IS NULL AND NEW.state = OLD.pending_state
                  AND OLD.state IN {FREE})
    BEGIN
        INSERT INTO agent_state_history (agent_id, agent_name, from_state, to_state, reason, at, contact_id)
        VALUES (NEW.id, NEW.name, OLD.state, NEW.state,
                CASE WHEN NEW.state IN ('Refused', 'OnBreak', 'WrapUp') THEN NEW.state_reason END,
                NEW.state_changed_at, coalesce(NEW.contact_id, OLD.contact_id));
    END""",
]
TRIGGER_NAMES = ["agents_history_state", "agents_history_insert", "agents_pending_state"]

# Seconds between two timestamps, and a timestamp's UTC day, per dialect.
_SECONDS = {"postgresql": "extract(epoch FROM ({b}) - ({a}))",
            "sqlite": "(julianday({b}) - julianday({a})) * 86400.0"}
_DAY = {"postgresql": "(({t}) AT TIME ZONE 'UTC')::date", "sqlite": "date({t})"}
_NOW = {"postgresql": "now()", "sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')"}

DAY_STATES = """
CREATE VIEW agent_day_states AS
SELECT agent_id, agent_name, {day} AS day, state, reason, sum({seconds}) AS seconds
  FROM (SELECT h.agent_id, h.agent_name, h.to_state AS state, h.reason, h.at,
               coalesce(lead(h.at) OVER (PARTITION BY h.agent_id ORDER BY h.at, h.id), {now}) AS until
          FROM agent_state_history h) i
 GROUP BY agent_id, agent_name, {day}, state, reason
"""
DAY_REPORT = """
CREATE VIEW agent_day_report AS
WITH t AS (
    SELECT agent_id, max(agent_name) AS agent_name, day,
           sum(CASE WHEN state <> 'LoggedOut' THEN seconds ELSE 0 END) AS logged_in_sec,
           sum(CASE WHEN state = 'Available' THEN seconds ELSE 0 END) AS available_sec,
           sum(CASE WHEN state = 'Offered' THEN seconds ELSE 0 END) AS offered_sec,
           sum(CASE WHEN state = 'OnCall' THEN seconds ELSE 0 END) AS on_call_sec,
           sum(CASE WHEN state = 'WrapUp' THEN seconds ELSE 0 END) AS wrap_up_sec,
           sum(CASE WHEN state = 'Refused' THEN seconds ELSE 0 END) AS delay_sec,
           sum(CASE WHEN state = 'OnBreak' THEN seconds ELSE 0 END) AS on_break_sec,
           sum(CASE WHEN state = 'Unavailable' THEN seconds ELSE 0 END) AS unavailable_sec,
           sum(CASE WHEN state = 'LoggedOut' THEN seconds ELSE 0 END) AS logged_out_sec
      FROM agent_day_states GROUP BY agent_id, day),
e AS (
    SELECT h.agent_id, {day_h} AS day,
           -- handled: the contacts this agent ended a conversation with (its last agent), once each
           count(DISTINCT CASE WHEN h.from_state = 'OnCall' AND c.agent_id = h.agent_id
                                    AND c.outcome IN ('handled', 'callback_completed') THEN h.contact_id END) AS handled,
           sum(CASE WHEN h.to_state = 'Refused' OR (h.to_state = 'OnBreak' AND h.reason = 'no_answer'
                                                    AND h.from_state IN ('Offered', 'OnCall')) THEN 1 ELSE 0 END) AS missed
      FROM agent_state_history h LEFT JOIN contacts c ON c.id = h.contact_id
     GROUP BY h.agent_id, {day_h})
SELECT t.*, coalesce(e.handled, 0) AS handled, coalesce(e.missed, 0) AS missed,
       CASE WHEN t.available_sec + t.offered_sec + t.on_call_sec + t.wrap_up_sec > 0
            THEN (t.offered_sec + t.on_call_sec + t.wrap_up_sec)
                 / (t.available_sec + t.offered_sec + t.on_call_sec + t.wrap_up_sec) END AS occupancy
  FROM t LEFT JOIN e ON e.agent_id = t.agent_id AND e.day = t.day
"""

_RETURNS = """(completed boolean, contact_id bigint, contact_state text, caller_uuid text,
               callback_number text, original_ani text, skill text, agent_id integer, agent_name text,
               dial_string text{extra})"""
COMPLETE = """
CREATE FUNCTION esl_cb_complete(p_contact bigint, p_now timestamptz, p_claim_leg text, p_controller text)
RETURNS TABLE """ + _RETURNS.format(extra=", wrap_up_until timestamptz") + """
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_agent integer;
    v_skill integer;
    v_wrap integer;
BEGIN
    -- Guarded: of two hangups of one conversation (agent and customer legs) only one gets here, and
    -- only on behalf of the contact's owner.
    UPDATE contacts
       SET state = 'ended', ended_at = p_now,
           outcome = CASE WHEN contacts.callback_requested THEN 'callback_completed' ELSE 'handled' END
     WHERE id = p_contact AND state = 'connected' AND (p_controller = '' OR contacts.controller_id = p_controller)
    RETURNING contacts.agent_id, contacts.skill_id INTO v_agent, v_skill;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,
                            NULL::integer, NULL::text, NULL::text, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT coalesce(a.wrap_up_sec, s.wrap_up_sec, 0) INTO v_wrap
      FROM agents a LEFT JOIN skills s ON s.id = v_skill WHERE a.id = v_agent;
    IF coalesce(v_wrap, 0) > 0 THEN
        -- Wrap-up: offered nothing until it ends (a timer in this controller, the sweep as the backstop).
        UPDATE agents SET state = 'WrapUp', state_changed_at = p_now, state_until = p_now + v_wrap * interval '1 second',
                          state_reason = NULL, contact_id = NULL, leg_uuid = NULL, missed_in_a_row = 0
         WHERE id = v_agent AND agents.contact_id = p_contact AND state IN ('OnCall', 'Offered')
           AND (p_controller = '' OR agents.controller_id = p_controller);
        RETURN QUERY SELECT true, NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,
                            v_agent, NULL::text, NULL::text,
                            CASE WHEN FOUND THEN p_now + v_wrap * interval '1 second' END;
        RETURN;
    END IF;
    -- Free the agent only from this contact: it may already be on the next one.
    UPDATE agents SET state = 'Available', state_changed_at = p_now, available_since = p_now,
                      contact_id = NULL, leg_uuid = NULL, missed_in_a_row = 0
     WHERE id = v_agent AND agents.contact_id = p_contact AND state IN ('OnCall', 'Offered')
       AND (p_controller = '' OR agents.controller_id = p_controller);
    IF p_claim_leg IS NULL THEN
        RETURN QUERY SELECT true, NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,
                            NULL::integer, NULL::text, NULL::text, NULL::timestamptz;
        RETURN;
    END IF;
    RETURN QUERY SELECT true, x.*, NULL::timestamptz FROM (SELECT 1) AS one
                 LEFT JOIN esl_cb_claim(p_now, p_claim_leg, p_controller) AS x ON true;
END
$$
"""
# For the downgrade: the completion of migration 0007.
PREVIOUS_COMPLETE = """
CREATE FUNCTION esl_cb_complete(p_contact bigint, p_now timestamptz, p_claim_leg text, p_controller text)
RETURNS TABLE """ + _RETURNS.format(extra="") + """
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_agent integer;
BEGIN
    -- Guarded: of two hangups of one conversation (agent and customer legs) only one gets here, and
    -- only on behalf of the contact's owner.
    UPDATE contacts
       SET state = 'ended', ended_at = p_now,
           outcome = CASE WHEN contacts.callback_requested THEN 'callback_completed' ELSE 'handled' END
     WHERE id = p_contact AND state = 'connected' AND (p_controller = '' OR contacts.controller_id = p_controller)
    RETURNING contacts.agent_id INTO v_agent;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,
                            NULL::integer, NULL::text, NULL::text;
        RETURN;
    END IF;
    -- Free the agent only from this contact: it may already be on the next one.
    UPDATE agents SET state = 'Available', state_changed_at = p_now, available_since = p_now,
                      contact_id = NULL, leg_uuid = NULL
     WHERE id = v_agent AND agents.contact_id = p_contact AND state IN ('OnCall', 'Offered')
       AND (p_controller = '' OR agents.controller_id = p_controller);
    IF p_claim_leg IS NULL THEN
        RETURN QUERY SELECT true, NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,
                            NULL::integer, NULL::text, NULL::text;
        RETURN;
    END IF;
    RETURN QUERY SELECT true, x.* FROM (SELECT 1) AS one
                 LEFT JOIN esl_cb_claim(p_now, p_claim_leg, p_controller) AS x ON true;
END
$$
"""
DROP_COMPLETE = "DROP FUNCTION esl_cb_complete(bigint, timestamptz, text, text)"


def _dialect() -> str:
    return op.get_bind().dialect.name


def upgrade() -> None:
    d = _dialect()
    for col, default in SETTINGS:
        op.add_column("skills", sa.Column(col, sa.Integer, nullable=False, server_default=str(default)))
        op.add_column("agents", sa.Column(col, sa.Integer, nullable=True))
    for col, type_ in AGENT_COLUMNS:
        op.add_column("agents", sa.Column(col, type_, nullable=True))
    op.add_column("agents", sa.Column("missed_in_a_row", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "agent_state_history",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("agent_id", sa.Integer, nullable=False),       # no foreign key: kept after the agent goes
        sa.Column("agent_name", sa.String(64), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("contact_id", BIGID, nullable=True),
    )
    op.create_index("ix_agent_state_history_agent_at", "agent_state_history", ["agent_id", "at"])
    # Every agent as they are now: their history starts here.
    op.execute("INSERT INTO agent_state_history (agent_id, agent_name, from_state, to_state, at) "
               "SELECT id, name, NULL, state, state_changed_at FROM agents")
    if d == "postgresql":
        op.execute(PG_PENDING)
        op.execute(PG_HISTORY)
        for sql in PG_TRIGGERS:
            op.execute(sql)
        op.execute(DROP_COMPLETE)
        op.execute(COMPLETE)
    else:
        for sql in SQLITE_TRIGGERS:
            op.execute(sql)
    op.execute(DAY_STATES.format(day=_DAY[d].format(t="at"), seconds=_SECONDS[d].format(a="at", b="until"),
                                 now=_NOW[d]))
    op.execute(DAY_REPORT.format(day_h=_DAY[d].format(t="h.at")))


def downgrade() -> None:
    d = _dialect()
    op.execute("DROP VIEW agent_day_report")
    op.execute("DROP VIEW agent_day_states")
    for name in TRIGGER_NAMES:
        op.execute(f"DROP TRIGGER {name}" + (" ON agents" if d == "postgresql" else ""))
    if d == "postgresql":
        op.execute("DROP FUNCTION esl_cb_agent_history()")
        op.execute("DROP FUNCTION esl_cb_apply_pending_state()")
        op.execute(DROP_COMPLETE)
        op.execute(PREVIOUS_COMPLETE)
    # Agents in the new states go back to the nearest old one.
    op.execute("UPDATE agents SET state = 'Available' WHERE state = 'WrapUp'")
    op.execute("UPDATE agents SET state = 'Unavailable' WHERE state = 'OnBreak'")
    op.drop_index("ix_agent_state_history_agent_at", "agent_state_history")
    op.drop_table("agent_state_history")
    op.drop_column("agents", "missed_in_a_row")
    for col, _ in reversed(AGENT_COLUMNS):
        op.drop_column("agents", col)
    for col, _ in reversed(SETTINGS):
        op.drop_column("agents", col)
        op.drop_column("skills", col)
