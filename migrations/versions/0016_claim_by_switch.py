"""Agents offered by the controller of a switch their phone is registered on (the fleet, issue 18).

An agent whose dial string is a directory user (`user/2001`) can only be rung through a switch where
that phone has a registration. In a fleet where phones register on the switches themselves (no SIP
proxy as their registrar), any controller could claim such an agent and place the call on its own
switch, which answered USER_NOT_REGISTERED (the agent then held for 30 s, and claimed again by the
wrong controller). And a switch that died kept its registration rows, so its agents looked
registered: each claim of them became such a failed originate.

Now esl_cb_claim (PostgreSQL) passes over an agent whose phone has a registration on a switch served
by a live controller (a heartbeat within 60 s) when it has none on the claiming controller's own
switch (`controllers.esl`): that other controller offers to them. Registrations on switches nobody
serves any more (a switch gone with its controller, or moved to another address) are not counted,
so they never leave an agent that no controller may claim: such an agent is claimed as before (an
originate answered USER_NOT_REGISTERED holds them 30 s) until their phone registers where a
controller serves. An agent not tracked (a gateway, a SIP URI, a phone registered at a proxy), a phone
with no such registration, and a claim by a store with no switch (the CLI, tests) are as before.
SQLite (one controller, one switch) is unchanged.

The function is migration 0013's text with this test after each test of an agent's state; the
settings an ALTER FUNCTION gave it are given again (CREATE OR REPLACE drops them).
"""
from alembic import op
from sqlalchemy import text

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

# -- esl_cb_claim as of migration 0013 (frozen here: no migration imports another) -----------------
# An agent whose phone is known to have no registration left is not offered (NULL: registered, or not
# known yet, or not tracked: offered as before).
PHONE_OK = """
                 AND a.phone_unregistered_since IS NULL"""

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
                                                 AND a.state = 'Available'{phone}
                                                 AND (a.offer_not_before IS NULL OR a.offer_not_before <= now())))"""
_EFFECTIVE = ("least({t}.priority_initial + {t}.priority_acceleration"
              " * greatest(date_part('epoch', now() - {t}.queued_at) / 60.0, 0),"
              " greatest({t}.priority_max, {t}.priority_initial))")

_CLAIM = """
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
                        WHERE k.skill_id = grp.skill_id AND a.state = 'Available'{phone}
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
         WHERE a.state = 'Available'{phone} AND (a.offer_not_before IS NULL OR a.offer_not_before <= now())
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
"""


def claim(phone: str) -> str:
    return _CLAIM.replace("{eligible}", _ELIGIBLE).replace("{effective_x}", _EFFECTIVE.format(t="x")).replace(
        "{effective_h}", _EFFECTIVE.format(t="h")).replace("{phone}", phone)


# The claiming controller's switch: NULL for a store that registered none (then no test by switch).
_MINE = "(SELECT m.esl FROM controllers m WHERE m.id = p_controller)"
PHONE_HERE = PHONE_OK + f"""
                 AND (a.phone_user IS NULL OR {_MINE} IS NULL
                      OR NOT EXISTS (SELECT 1 FROM phone_registrations r
                                       JOIN controllers o ON o.esl = r.switch
                                                         AND o.heartbeat_at > now() - interval '60 seconds'
                                      WHERE r.reg_user = a.phone_user
                                        AND (a.phone_domain IS NULL OR r.realm = a.phone_domain))
                      OR EXISTS (SELECT 1 FROM phone_registrations r
                                  WHERE r.reg_user = a.phone_user
                                    AND (a.phone_domain IS NULL OR r.realm = a.phone_domain)
                                    AND r.switch = {_MINE}))"""
SIGNATURE = "esl_cb_claim(timestamptz, text, text)"


def _replace_claim(sql: str) -> None:
    """CREATE OR REPLACE keeps only the settings its text names: those an ALTER FUNCTION gave the
    function before (jit = off, migration 0017) are given again."""
    settings = op.get_bind().execute(
        text("SELECT proconfig FROM pg_proc WHERE oid = to_regprocedure(:f)"), {"f": SIGNATURE}).scalar() or []
    op.execute(sql)
    for item in settings:
        name, _, value = item.partition("=")
        op.execute(f"ALTER FUNCTION {SIGNATURE} SET {name} = '{value}'")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _replace_claim(claim(PHONE_HERE))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _replace_claim(claim(PHONE_OK))
