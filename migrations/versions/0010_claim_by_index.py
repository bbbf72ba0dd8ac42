"""The claim's cost no longer grows with the queue (issue 18, Performance).

The view claim_queue (0007, 0008) pairs every waiting contact with every available agent of its
skill and sorts all pairs by a time-dependent expression: ~340 ms a claim with 5,000 waiting. Here
esl_cb_claim (PostgreSQL) gives the same pair, in the same order, from two indexes:

1. ix_contacts_waiting_head: contacts (skill_id, state, priority_initial, priority_acceleration,
   priority_max, queued_at, id) WHERE state IN ('queued', 'callback_queued'). Contacts that share
   (skill, state, initial, acceleration, max) form a group whose order is (queued_at, id) whenever
   acceleration >= 0: the effective priority least(initial + acceleration x minutes, greatest(max,
   initial)) never rises for a later queued_at, and ties go to the earlier one. So the best
   contact is the best of the groups' heads: the groups are read with a loose index scan (one probe
   each), each head with one more, and only the heads are ranked by the full SPEC 3 key. A group
   with a negative acceleration (allowed by the domain, unusual) is ranked by the full key.
2. ix_agents_available: agents (available_since, id) WHERE state = 'Available': the agent idle
   longest with the contact's skill.

The contact is locked (SKIP LOCKED), then the agent (SKIP LOCKED); a contact taken meanwhile is
skipped, a skill whose free agents are all taken is left out, and the next best is tried: what the
view's FOR UPDATE ... SKIP LOCKED did. Eligibility is the view's (callbacks_open, not_before,
expire_at, retry_at, offer_not_before, held_by, a reserved callback to its agent only), with the
database's clock. The view stays: SQLite's claim still reads it (the demo: one writer, small queues),
and tests hold both to esl_cb.domain.queue.order_key. Indexes only: contacts is not altered (on
SQLite a rebuild would drop 0007's triggers).

Revision ID: 0010
Revises: 0009
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

WAITING = "state IN ('queued', 'callback_queued')"
AVAILABLE = "state = 'Available'"
HEAD_COLUMNS = ["skill_id", "state", "priority_initial", "priority_acceleration", "priority_max", "queued_at", "id"]

# The view's eligibility of a contact x (and its skill s), now() being the database's clock.
_ELIGIBLE = """
           AND (x.state = 'queued' OR ((x.not_before IS NULL OR x.not_before <= now())
                                       AND (x.expire_at IS NULL OR x.expire_at > now())))
           AND (x.retry_at IS NULL OR x.retry_at <= now())
           AND (x.state <> 'queued' OR coalesce(x.controller_id, '') IN ('', p_controller))
           AND x.id <> ALL (v_skipped)
           -- a reserved callback waits for its agent (free, with the skill)
           AND NOT EXISTS (SELECT 1 FROM callback_assignments r
                            WHERE r.contact_id = x.id
                              AND NOT EXISTS (SELECT 1 FROM agents a JOIN agent_skills k ON k.agent_id = a.id
                                               WHERE a.id = r.agent_id AND k.skill_id = x.skill_id
                                                 AND a.state = 'Available'
                                                 AND (a.offer_not_before IS NULL OR a.offer_not_before <= now())))"""
_EFFECTIVE = ("least({t}.priority_initial + {t}.priority_acceleration"
              " * greatest(date_part('epoch', now() - {t}.queued_at) / 60.0, 0),"
              " greatest({t}.priority_max, {t}.priority_initial))")

CLAIM = """
CREATE OR REPLACE FUNCTION esl_cb_claim(p_now timestamptz, p_leg text, p_controller text)
RETURNS TABLE (contact_id bigint, contact_state text, caller_uuid text, callback_number text,
               original_ani text, skill text, agent_id integer, agent_name text, dial_string text)
LANGUAGE plpgsql
-- The plans do not depend on the values (index probes whatever the controller or skips): a custom plan
-- per call costs ~2.8 ms of planning, more than the claim; left to choose, a session may keep doing so.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
DECLARE
    v_skipped bigint[] := '{}';     -- contacts taken by another claim since we picked them
    v_full integer[] := '{}';       -- skills whose free agents another claim holds
    c record;
    g record;
BEGIN
    LOOP
        -- The best contact: the best of the groups' heads (see migration 0010).
        WITH RECURSIVE grp AS (
            (SELECT x.skill_id, x.state, x.priority_initial AS pi, x.priority_acceleration AS pa,
                    x.priority_max AS pm
               FROM contacts x WHERE x.state IN ('queued', 'callback_queued') AND x.skill_id IS NOT NULL
              ORDER BY 1, 2, 3, 4, 5 LIMIT 1)
            UNION ALL
            SELECT n.* FROM grp, LATERAL (
                SELECT x.skill_id, x.state, x.priority_initial, x.priority_acceleration, x.priority_max
                  FROM contacts x
                 WHERE x.state IN ('queued', 'callback_queued')
                   AND (x.skill_id, x.state, x.priority_initial, x.priority_acceleration, x.priority_max)
                       > (grp.skill_id, grp.state, grp.pi, grp.pa, grp.pm)
                 ORDER BY 1, 2, 3, 4, 5 LIMIT 1) n
        )
        SELECT h.id, h.state, h.skill_id, h.caller_uuid, h.callback_number, h.original_ani, s.name AS skill
          INTO c
          FROM grp
          JOIN skills s ON s.id = grp.skill_id
          CROSS JOIN LATERAL (
              (SELECT x.* FROM contacts x
                WHERE grp.pa >= 0 AND x.skill_id = grp.skill_id AND x.state = grp.state
                  AND x.state IN ('queued', 'callback_queued')     -- the index's predicate, spelt out
                  AND x.priority_initial = grp.pi AND x.priority_acceleration = grp.pa
                  AND x.priority_max = grp.pm {eligible}
                ORDER BY x.queued_at, x.id LIMIT 1)
              UNION ALL
              (SELECT x.* FROM contacts x
                WHERE grp.pa < 0 AND x.skill_id = grp.skill_id AND x.state = grp.state
                  AND x.state IN ('queued', 'callback_queued')     -- the index's predicate, spelt out
                  AND x.priority_initial = grp.pi AND x.priority_acceleration = grp.pa
                  AND x.priority_max = grp.pm {eligible}
                ORDER BY {effective_x} DESC, x.queued_at, x.id LIMIT 1)) h
         WHERE (grp.state = 'queued' OR s.callbacks_open)
           AND grp.skill_id <> ALL (v_full)
           AND EXISTS (SELECT 1 FROM agent_skills k JOIN agents a ON a.id = k.agent_id
                        WHERE k.skill_id = grp.skill_id AND a.state = 'Available'
                          AND (a.offer_not_before IS NULL OR a.offer_not_before <= now()))
         ORDER BY {effective_h} DESC, h.queued_at, h.id
         LIMIT 1;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        PERFORM 1 FROM contacts x WHERE x.id = c.id AND x.state = c.state FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            v_skipped := v_skipped || c.id;
            CONTINUE;
        END IF;
        -- The agent idle longest with the skill (a reserved callback: its agent only).
        SELECT a.id, a.name, a.dial_string INTO g
          FROM agents a JOIN agent_skills k ON k.agent_id = a.id AND k.skill_id = c.skill_id
         WHERE a.state = 'Available' AND (a.offer_not_before IS NULL OR a.offer_not_before <= now())
           AND NOT EXISTS (SELECT 1 FROM callback_assignments r WHERE r.contact_id = c.id AND r.agent_id <> a.id)
         ORDER BY coalesce(a.available_since, now()), a.id
         LIMIT 1
           FOR UPDATE OF a SKIP LOCKED;
        IF FOUND THEN
            EXIT;
        END IF;
        IF EXISTS (SELECT 1 FROM callback_assignments r WHERE r.contact_id = c.id) THEN
            v_skipped := v_skipped || c.id;      -- its agent is another claim's: the next contact
        ELSE
            v_full := v_full || c.skill_id;      -- every free agent of the skill is another claim's
        END IF;
    END LOOP;
    UPDATE agents SET state = 'Offered', state_changed_at = p_now, contact_id = c.id, leg_uuid = p_leg,
                      controller_id = p_controller
     WHERE id = g.id AND state = 'Available';
    UPDATE contacts SET state = 'offered', offered_at = p_now, agent_id = g.id, agent_leg_uuid = p_leg,
                        controller_id = p_controller
     WHERE id = c.id AND state IN ('queued', 'callback_queued');
    RETURN QUERY SELECT c.id::bigint, c.state::text, c.caller_uuid::text, c.callback_number::text,
                        c.original_ani::text, c.skill::text, g.id::integer, g.name::text, g.dial_string::text;
END
$$
""".replace("{eligible}", _ELIGIBLE).replace("{effective_x}", _EFFECTIVE.format(t="x")).replace(
    "{effective_h}", _EFFECTIVE.format(t="h"))

# For the downgrade: esl_cb_claim as of migration 0007 (it reads the view).
PREVIOUS_CLAIM = """
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


def upgrade() -> None:
    # Indexes only, on both dialects (SQLite's claim reads the view; the models say the same).
    op.create_index("ix_contacts_waiting_head", "contacts", HEAD_COLUMNS,
                    postgresql_where=sa.text(WAITING), sqlite_where=sa.text(WAITING))
    op.create_index("ix_agents_available", "agents", ["available_since", "id"],
                    postgresql_where=sa.text(AVAILABLE), sqlite_where=sa.text(AVAILABLE))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(CLAIM)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PREVIOUS_CLAIM)
    op.drop_index("ix_agents_available", "agents")
    op.drop_index("ix_contacts_waiting_head", "contacts")
