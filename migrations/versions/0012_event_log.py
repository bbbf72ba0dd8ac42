"""The live events, kept for replay (issue 19): a client that reconnects with Last-Event-ID gets
what it missed.

1. `api_events`: every event of channel `esl_cb_events` (a contact's or an agent's state changed, a
   supervisor's change, a booking tied to its token), one row each; its `id` is the event's id in
   the stream (`id:` of Server-Sent Events), the same for every API process.
2. PostgreSQL: `esl_cb_event(doc json)` stores the event and NOTIFYs it with its id, in the
   transaction of the change (so an event is kept exactly when its change commits). The triggers'
   function of 0008, `esl_cb_notify_event`, now calls it. Every 1000th event it also drops what is
   more than 100,000 events old: the log is bounded even where no API process runs (the API prunes
   by age, `--event-log-hours`). That prune runs in the controllers' hot transactions, so it takes
   only rows nobody holds (FOR UPDATE SKIP LOCKED, at most 5000): it never waits on the API's purge
   or another prune (no deadlock, no stall); what it skips, a later prune or the purge takes.
   Ids come from a sequence at insert but become visible at commit, so a lower id can commit after
   a higher one: each event also keeps its transaction's id (`tx_id`) and the xmin of a snapshot
   taken in it (`tx_xmin`, every transaction older than it had ended). The stream's id is
   "<id>.<tx_xmin>"; a reconnect replays the ids after <id> and the ids at or before it whose
   transaction is not older than <tx_xmin> (it may have been in flight then: the client
   de-duplicates by event_id). pg_current_xact_id() is 64 bits: no wraparound.

On SQLite the table is made (the models are the same), nothing fills it: live events need
PostgreSQL.

3. A waiting contact's place without reading the whole queue (the HTTP API reads it on every
   booking and every GET of a callback): `ix_contacts_waiting_fixed` (skill_id, priority_initial,
   queued_at, id) over waiting contacts whose priority does not accelerate (their effective
   priority is priority_initial), so those ahead are counted as index ranges; and
   `ix_contacts_waiting_accelerating` (skill_id) over the others, whose priority is computed.

Revision ID: 0012
Revises: 0011
"""
import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
WAITING = "state IN ('queued', 'callback_queued')"

PG_EVENT = """
CREATE FUNCTION esl_cb_event(doc json) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    event_id bigint;
    event_xmin bigint;
BEGIN
    INSERT INTO api_events (at, doc, tx_id, tx_xmin)
        VALUES (now(), doc::text, pg_current_xact_id()::text::bigint,
                pg_snapshot_xmin(pg_current_snapshot())::text::bigint)
        RETURNING id, tx_xmin INTO event_id, event_xmin;
    IF event_id % 1000 = 0 THEN
        DELETE FROM api_events WHERE id IN (SELECT id FROM api_events WHERE id <= event_id - 100000
                                            ORDER BY id LIMIT 5000 FOR UPDATE SKIP LOCKED);
    END IF;
    PERFORM pg_notify('esl_cb_events', (jsonb_build_object('event_id', event_id, 'event_xmin', event_xmin)
                                        || doc::jsonb)::text);
    RETURN event_id;
END
$$
"""
PG_NOTIFY_LOGGED = """
CREATE OR REPLACE FUNCTION esl_cb_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'contacts' THEN
        PERFORM esl_cb_event(json_build_object(
            'kind', 'contact', 'id', NEW.id, 'state', NEW.state, 'skill_id', NEW.skill_id,
            'agent_id', NEW.agent_id, 'callback', NEW.callback_requested, 'outcome', NEW.outcome));
    ELSE
        PERFORM esl_cb_event(json_build_object(
            'kind', 'agent', 'id', NEW.id, 'name', NEW.name, 'state', NEW.state,
            'contact_id', NEW.contact_id));
    END IF;
    RETURN NULL;
END
$$
"""
# 0008's, for the downgrade.
PG_NOTIFY_0008 = """
CREATE OR REPLACE FUNCTION esl_cb_notify_event() RETURNS trigger LANGUAGE plpgsql AS $$
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


def upgrade() -> None:
    op.create_table(
        "api_events",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("doc", sa.Text, nullable=False),
        sa.Column("tx_id", sa.BigInteger, nullable=True),        # PostgreSQL only (SQLite keeps no events)
        sa.Column("tx_xmin", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_api_events_at", "api_events", ["at"])
    op.create_index("ix_api_events_tx_id", "api_events", ["tx_id"])
    op.create_index("ix_contacts_waiting_fixed", "contacts", ["skill_id", "priority_initial", "queued_at", "id"],
                    postgresql_where=sa.text(f"{WAITING} AND priority_acceleration = 0"),
                    sqlite_where=sa.text(f"{WAITING} AND priority_acceleration = 0"))
    op.create_index("ix_contacts_waiting_accelerating", "contacts", ["skill_id"],
                    postgresql_where=sa.text(f"{WAITING} AND priority_acceleration <> 0"),
                    sqlite_where=sa.text(f"{WAITING} AND priority_acceleration <> 0"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_EVENT)
        op.execute(PG_NOTIFY_LOGGED)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_NOTIFY_0008)
        op.execute("DROP FUNCTION esl_cb_event(json)")
    op.drop_index("ix_contacts_waiting_accelerating", "contacts")
    op.drop_index("ix_contacts_waiting_fixed", "contacts")
    op.drop_index("ix_api_events_tx_id", "api_events")
    op.drop_index("ix_api_events_at", "api_events")
    op.drop_table("api_events")
