"""Callbacks the way contact centres run them (issue 14): opening hours and a default expiry per
skill, an expiry and a not-before time per callback, the customer's confirmation; the claim honours
them; the reporting view shows them; Queuestatus' handle-time average gets its index.

The claim reads `skills.callbacks_open`, which the controllers keep from the skill's hours (a
calendar in SQL would be slower and harder to read than a flag).

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)

CLAIM = """
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

REPORTING_VIEW = """
CREATE VIEW reporting_contacts AS
SELECT c.id AS contact_id,
       c.direction,
       s.name AS skill,
       c.original_ani, c.original_dnis, c.ani, c.dnis,
       c.priority_initial, c.priority_acceleration, c.priority_max,
       c.callback_requested,
       c.callback_number,
       c.arrived_at, c.queued_at, c.callback_requested_at, c.offered_at, c.accepted_at,
       c.dialled_at, c.connected_at, c.ended_at,
       a.name AS agent,
       c.state,
       c.outcome,
       c.attempts,
       c.not_before,
       c.expire_at,
       c.confirmed
FROM contacts c
LEFT JOIN skills s ON s.id = c.skill_id
LEFT JOIN agents a ON a.id = c.agent_id
"""

# For the downgrade: the claim of migration 0004 and the reporting view of 0001.
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
    -- SKIP LOCKED: another controller claiming at the same moment takes the next pair.
    SELECT c.id, c.state, c.caller_uuid, c.callback_number, c.original_ani, s.name AS skill,
           a.id AS aid, a.name AS aname, a.dial_string
      INTO r
      FROM contacts c
      JOIN skills s ON s.id = c.skill_id
      JOIN agent_skills k ON k.skill_id = c.skill_id
      JOIN agents a ON a.id = k.agent_id
     WHERE a.state = 'Available'
       AND (a.offer_not_before IS NULL OR a.offer_not_before <= p_now)
       AND c.state IN ('queued', 'callback_queued')
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

PREVIOUS_VIEW = """
CREATE VIEW reporting_contacts AS
SELECT c.id AS contact_id,
       c.direction,
       s.name AS skill,
       c.original_ani, c.original_dnis, c.ani, c.dnis,
       c.priority_initial, c.priority_acceleration, c.priority_max,
       c.callback_requested,
       c.callback_number,
       c.arrived_at, c.queued_at, c.callback_requested_at, c.offered_at, c.accepted_at,
       c.dialled_at, c.connected_at, c.ended_at,
       a.name AS agent,
       c.state,
       c.outcome,
       c.attempts
FROM contacts c
LEFT JOIN skills s ON s.id = c.skill_id
LEFT JOIN agents a ON a.id = c.agent_id
"""


def upgrade() -> None:
    op.execute("DROP VIEW reporting_contacts")          # SQLite rebuilds altered tables under the view
    with op.batch_alter_table("skills") as batch:
        batch.add_column(sa.Column("timezone", sa.String(64), nullable=False, server_default="UTC"))
        batch.add_column(sa.Column("hours", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("closed_dates", sa.Text, nullable=False, server_default=""))
        batch.add_column(sa.Column("callback_expire_sec", sa.Integer, nullable=True))
        batch.add_column(sa.Column("callbacks_open", sa.Boolean, nullable=False, server_default=sa.true()))
    with op.batch_alter_table("contacts") as batch:
        batch.add_column(sa.Column("expire_at", TS, nullable=True))
        batch.add_column(sa.Column("not_before", TS, nullable=True))
        batch.add_column(sa.Column("callback_options", sa.Text, nullable=True))
        batch.add_column(sa.Column("confirmed", sa.Boolean, nullable=True))
    op.add_column("callback_attempts", sa.Column("confirmed", sa.Boolean, nullable=True))
    op.create_index("ix_contacts_skill_ended", "contacts", ["skill_id", "ended_at"])
    op.execute(REPORTING_VIEW)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CLAIM)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PREVIOUS_CLAIM)
    op.execute("DROP VIEW reporting_contacts")
    op.drop_index("ix_contacts_skill_ended", "contacts")
    with op.batch_alter_table("callback_attempts") as batch:
        batch.drop_column("confirmed")
    with op.batch_alter_table("contacts") as batch:
        for name in ("confirmed", "callback_options", "not_before", "expire_at"):
            batch.drop_column(name)
    with op.batch_alter_table("skills") as batch:
        for name in ("callbacks_open", "callback_expire_sec", "closed_dates", "hours", "timezone"):
            batch.drop_column(name)
    op.execute(PREVIOUS_VIEW)
