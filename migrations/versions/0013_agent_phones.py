"""Agents' phones (issue 20, part 2): registration-aware offers, PINs for feature codes.

1. phone_registrations: which directory users have a registration on which switch, as the
   controllers learn it (sofia::register / unregister / expire, and `show registrations` at each
   connection). One row per (switch, user, realm): FreeSWITCH keeps its own list of bindings; a row
   goes only when the switch says the user has none left (the last one gone decides).
2. agents.phone_user / phone_domain: the directory user the agent's dial string rings (user/2001 ->
   2001; user/2001@example.com -> 2001, example.com). NULL: not tracked (a gateway, a plain SIP URI,
   an agent registered at a proxy), offered as before. Existing agents are classified here.
3. agents.phone_unregistered_since: set when the switches have no registration of the agent's phone
   left (the store derives it from phone_registrations after each change it learns of; never
   learnt: NULL). The claim skips such an agent: esl_cb_claim
   (PostgreSQL, migration 0010's, the same text with {phone}) and the view claim_queue (SQLite,
   migration 0008's, the same). Indexes: phone_registrations by user.
4. agents.pin_hash (scrypt, never the PIN), login_number (the digits an agent keys on the phone),
   pin_failures and pin_locked_until (wrong PINs in a row; a lock after too many).

Revision ID: 0013
Revises: 0012
"""
import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)

# An agent whose phone is known to have no registration left is not offered (NULL: registered, or not
# known yet, or not tracked: offered as before).
PHONE_OK = """
                 AND a.phone_unregistered_since IS NULL"""

# -- esl_cb_claim as of migration 0010, with {phone} after each test of an agent's state ---------------
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

# claim_queue as of migration 0008 (a reserved callback goes to its agent only), with {phone}.
CLAIM_QUEUE = """
CREATE VIEW claim_queue AS
SELECT c.id AS contact_id, c.state AS contact_state, c.caller_uuid, c.callback_number, c.original_ani,
       s.name AS skill, a.id AS agent_id, a.name AS agent_name, a.dial_string,
       CASE WHEN c.state = 'queued' THEN NULLIF(c.controller_id, '') END AS held_by
  FROM contacts c
  JOIN skills s ON s.id = c.skill_id
  JOIN agent_skills k ON k.skill_id = c.skill_id
  JOIN agents a ON a.id = k.agent_id
 WHERE a.state = 'Available'{phone}
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



def claim(phone: str) -> str:
    return _CLAIM.replace("{eligible}", _ELIGIBLE).replace("{effective_x}", _EFFECTIVE.format(t="x")).replace(
        "{effective_h}", _EFFECTIVE.format(t="h")).replace("{phone}", phone)


# Existing agents whose dial string is user/NAME[@DOMAIN] are tracked (what live code does for new ones).
CLASSIFY = {
    "postgresql": """
UPDATE agents SET phone_user = split_part(substr(dial_string, 6), '@', 1),
                  phone_domain = nullif(split_part(substr(dial_string, 6), '@', 2), '')
 WHERE dial_string LIKE 'user/%' AND length(dial_string) > 5""",
    "sqlite": """
UPDATE agents SET phone_user = CASE WHEN instr(substr(dial_string, 6), '@') > 0
                                    THEN substr(dial_string, 6, instr(substr(dial_string, 6), '@') - 1)
                                    ELSE substr(dial_string, 6) END,
                  phone_domain = CASE WHEN instr(substr(dial_string, 6), '@') > 0
                                      THEN nullif(substr(dial_string, 6 + instr(substr(dial_string, 6), '@')), '')
                                 END
 WHERE dial_string LIKE 'user/%' AND length(dial_string) > 5""",
}


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    op.create_table(
        "phone_registrations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("switch", sa.String(255), nullable=False),
        sa.Column("reg_user", sa.String(64), nullable=False),
        sa.Column("realm", sa.String(128), nullable=False),
        sa.Column("contact", sa.Text, nullable=False),
        sa.Column("registered_at", TS, nullable=False),
        sa.UniqueConstraint("switch", "reg_user", "realm", name="uq_phone_registrations_user"),
    )
    op.create_index("ix_phone_registrations_reg_user", "phone_registrations", ["reg_user"])
    for column in (sa.Column("phone_user", sa.String(64), nullable=True),
                   sa.Column("phone_domain", sa.String(128), nullable=True),
                   sa.Column("phone_unregistered_since", TS, nullable=True),
                   sa.Column("pin_hash", sa.String(255), nullable=True),
                   sa.Column("login_number", sa.String(32), nullable=True),
                   sa.Column("pin_failures", sa.Integer, nullable=False, server_default="0"),
                   sa.Column("pin_locked_until", TS, nullable=True)):
        op.add_column("agents", column)
    op.create_index("ix_agents_login_number", "agents", ["login_number"], unique=True)
    op.execute(CLASSIFY[dialect])
    _replace_claim_queue(PHONE_OK)
    if dialect == "postgresql":
        op.execute(claim(PHONE_OK))


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(claim(""))
    _replace_claim_queue("")
    op.drop_index("ix_agents_login_number", "agents")
    # SQLite 3.35+ drops a column in place (a batch rebuild of agents would drop the view on it).
    for name in ("pin_locked_until", "pin_failures", "login_number", "pin_hash", "phone_unregistered_since", "phone_domain",
                 "phone_user"):
        op.execute(f"ALTER TABLE agents DROP COLUMN {name}")
    op.drop_index("ix_phone_registrations_reg_user", "phone_registrations")
    op.drop_table("phone_registrations")


def _replace_claim_queue(phone: str) -> None:
    op.execute("DROP VIEW claim_queue")
    op.execute(CLAIM_QUEUE.format(assigned=ASSIGNED, phone=phone, **DIALECT[op.get_bind().dialect.name]))
