"""A full switch refuses new sessions at once; an agent it refused to ring is not offered again
before `agents.offer_not_before` (the controller's growing, capped back-off), so the dispatcher
goes on with other agents instead of re-offering the same pair in a tight loop.

esl_cb_claim (migration 0003) learns the column; everything else about it is unchanged.

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

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


# For the downgrade: the claim of migration 0003, and the views of 0001 (SQLite rebuilds `agents` to drop
# a column, which fails while views name it).
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
       c.attempts
FROM contacts c
LEFT JOIN skills s ON s.id = c.skill_id
LEFT JOIN agents a ON a.id = c.agent_id
"""

BILLING_VIEW = """
CREATE VIEW billing_legs AS
SELECT l.uuid,
       l.contact_id,
       CASE l.kind WHEN 'caller' THEN 'inbound' ELSE 'outbound' END AS direction,
       l.kind,
       a.name AS agent,
       l.from_number, l.to_number,
       l.started_at, l.answered_at, l.ended_at,
       COALESCE(l.billsec, 0) AS billable_seconds,
       l.hangup_cause
FROM legs l
LEFT JOIN agents a ON a.id = l.agent_id
"""


def upgrade() -> None:
    op.add_column("agents", sa.Column("offer_not_before", sa.DateTime(timezone=True), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CLAIM)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PREVIOUS_CLAIM)
    op.execute("DROP VIEW billing_legs")
    op.execute("DROP VIEW reporting_contacts")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("offer_not_before")
    op.execute(REPORTING_VIEW)
    op.execute(BILLING_VIEW)
