"""The HTTP API (issue 19): tokens, bookings by token, idempotency keys, callbacks reserved for one
agent, the webhooks' outbox, each skill's outbound caller ID, and the live events.

1. `skills.outbound_caller_id`: the number a skill's customers know, shown on a booked callback
   without a caller ID and on a script's Callback whose CallerID is no dialable number.
2. `api_tokens` (bearer tokens, stored as the SHA-256 of the secret; a webhook URL and its signing
   secret per token), `api_bookings` (which token booked which callback: a booking token sees only
   those), `idempotency_keys` (a POST's first answer, kept 24 h).
3. `callback_assignments`: a callback a supervisor reserved for one agent. claim_queue (migration
   0007, frozen again here) offers such a callback to that agent only.
4. `webhook_outbox`: one row per callback outcome and token to tell, written by a trigger in the
   transaction that ends the callback (so no outcome is lost whatever the API process is doing);
   the API process delivers them (at least once) and marks them.
5. Live events (PostgreSQL): triggers NOTIFY channel `esl_cb_events` with a small JSON document
   when a contact's or an agent's state changes; the API's event stream LISTENs to it.

On SQLite (the demo) the tables and the view are made, the triggers of 4 and 5 are not: the API's
live events and webhooks need PostgreSQL.

Revision ID: 0008
Revises: 0007
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# claim_queue as of migration 0007, with {assigned}: a reserved callback goes to its agent only.
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
   AND (c.retry_at IS NULL OR c.retry_at <= {now}){assigned}
 ORDER BY {least}(c.priority_initial + c.priority_acceleration * {greatest}({minutes_waited}, 0),
                  {greatest}(c.priority_max, c.priority_initial)) DESC,
          c.queued_at, c.id, coalesce(a.available_since, {now}), a.id
{lock}
"""
ASSIGNED = """
   AND NOT EXISTS (SELECT 1 FROM callback_assignments r WHERE r.contact_id = c.id AND r.agent_id <> a.id)"""
DIALECT = {
    "postgresql": dict(now="now()", minutes_waited="date_part('epoch', now() - c.queued_at) / 60.0",
                       least="least", greatest="greatest", lock="FOR UPDATE OF c, a SKIP LOCKED"),
    "sqlite": dict(now="strftime('%Y-%m-%d %H:%M:%f000', 'now')",
                   minutes_waited="(julianday('now') - julianday(c.queued_at)) * 1440.0",
                   least="min", greatest="max", lock=""),
}

PG_EVENTS = """
CREATE FUNCTION esl_cb_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'contacts' THEN
        PERFORM pg_notify('esl_cb_events', json_build_object(
            'kind', 'contact', 'id', NEW.id, 'state', NEW.state, 'skill_id', NEW.skill_id,
            'agent_id', NEW.agent_id, 'callback', NEW.callback_requested, 'outcome', NEW.outcome)::text);
    ELSE
        PERFORM pg_notify('esl_cb_events', json_build_object(
            'kind', 'agent', 'id', NEW.id, 'name', NEW.name, 'state', NEW.state,
            'contact_id', NEW.contact_id)::text);
    END IF;
    RETURN NULL;
END
$$
"""
PG_OUTBOX = """
CREATE FUNCTION esl_cb_outcome_to_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Every token with a webhook that booked this callback, or that oversees them all.
    INSERT INTO webhook_outbox (token_id, contact_id, body, created_at, next_attempt_at, attempts)
    SELECT t.id, NEW.id, json_build_object(
               'event', 'callback.ended', 'id', NEW.id, 'outcome', NEW.outcome, 'attempts', NEW.attempts,
               'number', NEW.callback_number, 'skill', (SELECT name FROM skills WHERE id = NEW.skill_id),
               'ended_at', NEW.ended_at, 'error', NEW.last_error)::text,
           now(), now(), 0
      FROM api_tokens t
     WHERE t.webhook_url IS NOT NULL AND t.revoked_at IS NULL
       AND (t.role IN ('supervisor', 'admin')
            OR EXISTS (SELECT 1 FROM api_bookings b WHERE b.contact_id = NEW.id AND b.token_id = t.id))
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$
"""
PG_TRIGGERS = [
    "CREATE TRIGGER contacts_event_insert AFTER INSERT ON contacts FOR EACH ROW "
    "EXECUTE FUNCTION esl_cb_notify_event()",
    "CREATE TRIGGER contacts_event_state AFTER UPDATE OF state ON contacts FOR EACH ROW "
    "WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION esl_cb_notify_event()",
    "CREATE TRIGGER agents_event_state AFTER UPDATE OF state ON agents FOR EACH ROW "
    "WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION esl_cb_notify_event()",
    "CREATE TRIGGER contacts_outcome_outbox AFTER UPDATE OF state ON contacts FOR EACH ROW "
    "WHEN (NEW.state = 'ended' AND OLD.state <> 'ended' AND NEW.callback_requested) "
    "EXECUTE FUNCTION esl_cb_outcome_to_outbox()",
]
PG_TRIGGER_NAMES = [("contacts_event_insert", "contacts"), ("contacts_event_state", "contacts"),
                    ("agents_event_state", "agents"), ("contacts_outcome_outbox", "contacts")]


def upgrade() -> None:
    op.add_column("skills", sa.Column("outbound_caller_id", sa.String(32), nullable=True))
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("agent", sa.String(64), nullable=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.Column("webhook_url", sa.Text, nullable=True),
        sa.Column("webhook_secret", sa.String(64), nullable=True),
    )
    op.create_table(
        "api_bookings",
        sa.Column("contact_id", BIGID, sa.ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("token_id", sa.Integer, sa.ForeignKey("api_tokens.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("booked_at", TS, nullable=False),
    )
    op.create_index("ix_api_bookings_token", "api_bookings", ["token_id", "contact_id"])
    op.create_table(
        "idempotency_keys",
        sa.Column("token_id", sa.Integer, sa.ForeignKey("api_tokens.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("response", sa.Text, nullable=True),
        sa.Column("location", sa.String(255), nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])
    op.create_table(
        "callback_assignments",
        sa.Column("contact_id", BIGID, sa.ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("agent_id", sa.Integer, sa.ForeignKey("agents.id", ondelete="CASCADE"), nullable=False),
        sa.Column("assigned_at", TS, nullable=False),
    )
    op.create_table(
        "webhook_outbox",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("token_id", sa.Integer, sa.ForeignKey("api_tokens.id", ondelete="CASCADE"), nullable=False),
        sa.Column("contact_id", BIGID, sa.ForeignKey("contacts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("next_attempt_at", TS, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("delivered_at", TS, nullable=True),
        sa.Column("given_up_at", TS, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.UniqueConstraint("token_id", "contact_id", name="uq_webhook_outbox_token_contact"),
    )
    op.create_index("ix_webhook_outbox_due", "webhook_outbox", ["delivered_at", "next_attempt_at"])
    dialect = op.get_bind().dialect.name
    _replace_claim_queue(ASSIGNED)
    if dialect == "postgresql":
        op.execute(PG_EVENTS)
        op.execute(PG_OUTBOX)
        for sql in PG_TRIGGERS:
            op.execute(sql)


def downgrade() -> None:
    if _pg():
        for name, table in PG_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER {name} ON {table}")
        op.execute("DROP FUNCTION esl_cb_outcome_to_outbox()")
        op.execute("DROP FUNCTION esl_cb_notify_event()")
    _replace_claim_queue("")
    op.drop_index("ix_webhook_outbox_due", "webhook_outbox")
    op.drop_table("webhook_outbox")
    op.drop_table("callback_assignments")
    op.drop_index("ix_idempotency_keys_created_at", "idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_api_bookings_token", "api_bookings")
    op.drop_table("api_bookings")
    op.drop_table("api_tokens")
    # SQLite 3.35+ drops a column in place (a batch rebuild of skills would drop the view on it).
    op.execute("ALTER TABLE skills DROP COLUMN outbound_caller_id")


def _replace_claim_queue(assigned: str) -> None:
    """The view again, with or without the reservation (esl_cb_claim reads it by name, at run time)."""
    op.execute("DROP VIEW claim_queue")
    op.execute(CLAIM_QUEUE.format(assigned=assigned, **DIALECT[op.get_bind().dialect.name]))


def _pg() -> bool:
    return op.get_bind().dialect.name == "postgresql"
