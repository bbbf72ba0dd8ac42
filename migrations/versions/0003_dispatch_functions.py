"""Dispatch in one round trip on PostgreSQL: claim the next (contact, agent) pair, and complete a
conversation while claiming the freed agent's next contact.

The hot path from a hangup to the next offer was nine round trips (ping, BEGIN, three statements to
complete, three to claim, COMMIT); under load each costs a millisecond or more. These functions do
the same guarded updates inside the server, in one statement and one commit. SQLite (the demo) keeps
the SQLAlchemy path in esl_cb/db/store.py; tests hold both to the same answers.

The state names are the stored values of esl_cb.domain.states; the ordering is SPEC section 3,
esl_cb.domain.queue.order_key.

Revision ID: 0003
Revises: 0002
"""
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

EFFECTIVE_PRIORITY = """
CREATE FUNCTION esl_cb_effective_priority(initial float8, acceleration float8, maximum float8,
                                          queued_at timestamptz, at timestamptz)
RETURNS float8 LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT least(initial + acceleration * greatest(date_part('epoch', at - queued_at) / 60.0, 0),
                 greatest(maximum, initial))
$$
"""

CLAIM = """
CREATE FUNCTION esl_cb_claim(p_now timestamptz, p_leg text, p_controller text)
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

COMPLETE = """
CREATE FUNCTION esl_cb_complete(p_contact bigint, p_now timestamptz, p_claim_leg text, p_controller text)
RETURNS TABLE (completed boolean, contact_id bigint, contact_state text, caller_uuid text,
               callback_number text, original_ani text, skill text, agent_id integer, agent_name text,
               dial_string text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_agent integer;
BEGIN
    -- Guarded: of two hangups of one conversation (agent and customer legs) only one gets here.
    UPDATE contacts
       SET state = 'ended', ended_at = p_now,
           outcome = CASE WHEN contacts.callback_requested THEN 'callback_completed' ELSE 'handled' END
     WHERE id = p_contact AND state = 'connected'
    RETURNING contacts.agent_id INTO v_agent;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, NULL::bigint, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,
                            NULL::integer, NULL::text, NULL::text;
        RETURN;
    END IF;
    -- Free the agent only from this contact: it may already be on the next one.
    UPDATE agents SET state = 'Available', state_changed_at = p_now, available_since = p_now,
                      contact_id = NULL, leg_uuid = NULL
     WHERE id = v_agent AND agents.contact_id = p_contact AND state IN ('OnCall', 'Offered');
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


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(EFFECTIVE_PRIORITY)
    op.execute(CLAIM)
    op.execute(COMPLETE)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION esl_cb_complete(bigint, timestamptz, text, text)")
    op.execute("DROP FUNCTION esl_cb_claim(timestamptz, text, text)")
    op.execute("DROP FUNCTION esl_cb_effective_priority(float8, float8, float8, timestamptz, timestamptz)")
