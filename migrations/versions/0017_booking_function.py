"""A booking in one statement (issue 19's 200 bookings a second): `esl_cb_book`, PostgreSQL only.

What `db/contacts.py:schedule_callback` did in 7-9 statements (the skill and its locks, the open
callback of the number and skill, the rate limits, the join or the insert, the audit row and the
controllers' wake-up, the tie to an API token with its event, then the new callback's place in its
queue) in one function, so a booking is one round trip (in a transaction of its own when nothing
else must commit with it). Each step is the statement it replaces, in the same order (the locks:
the limits' first, then the number's and skill's: no deadlock with a script's Callback), and the
place is counted as `db/queue_status.py:_status_query` counts it (ix_contacts_waiting_fixed for the
priorities that do not accelerate; tests compare the two). SQLite keeps the Python path.

`p_skill_caller_id`: without a caller ID given, the skill's outbound one (read with the skill).
Returns one row: `outcome` unknown_skill | per_number | per_caller (a rate limit: `n` requests
counted; nothing was written) | new | joined; the callback's id, state, not_before, expire_at, the
caller ID it was given (`shown`: given or the skill's; NULL: the number itself); and
for its place, as the status query: `waiting`/`served`, `ahead`, the skill's agents `staffed` and
`available`, its `skill_id`.

Also: the claim and the completion run without JIT (JIT_OFF below says why).

Revision ID: 0017
Revises: 0016
"""
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

PG_BOOK = """
CREATE FUNCTION esl_cb_book(
    p_number text, p_skill text, p_now timestamptz, p_at timestamptz, p_caller_id text, p_delay integer,
    p_pi double precision, p_pa double precision, p_pm double precision, p_expire_after double precision,
    p_expire_at timestamptz, p_override boolean, p_data text, p_options text, p_limits boolean,
    p_per_number integer, p_per_caller integer, p_operator text, p_new_detail text, p_token bigint,
    p_skill_caller_id boolean)
RETURNS TABLE (outcome text, n bigint, contact_id bigint, state text, not_before timestamptz,
               expire_at timestamptz, shown text, skill_id integer, waiting boolean, served boolean, ahead bigint,
               staffed bigint, available bigint)
LANGUAGE plpgsql
SET jit = off          -- see JIT_OFF
AS $$
DECLARE
    s record;
    o record;
    me record;
    cid bigint;
    v_caller text := nullif(p_caller_id, '');
    expire double precision;
    p double precision;
BEGIN
    SELECT k.id, k.callback_expire_sec, k.outbound_caller_id INTO s FROM skills k WHERE k.name = p_skill;
    IF NOT FOUND THEN
        outcome := 'unknown_skill';
        RETURN NEXT;
        RETURN;
    END IF;
    IF v_caller IS NULL AND p_skill_caller_id THEN      -- none given: the number the skill's customers know
        v_caller := nullif(s.outbound_caller_id, '');
    END IF;
    shown := v_caller;
    IF p_limits THEN
        PERFORM pg_advisory_xact_lock(hashtext('cb-number/' || p_number));
        PERFORM pg_advisory_xact_lock(hashtext('cb-caller/' || p_number));
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext(p_number || '/' || s.id::text));
    SELECT c.id, c.state, c.queued_at, c.not_before, c.expire_at, c.callback_options, c.priority_initial,
           c.priority_acceleration, c.priority_max
      INTO o FROM contacts c
     WHERE c.callback_number = p_number AND c.skill_id = s.id AND c.callback_requested AND c.state <> 'ended'
     ORDER BY c.queued_at LIMIT 1 FOR UPDATE;
    IF FOUND THEN             -- joins the open callback: makes no call, never refused by the limits
        UPDATE contacts c SET
            queued_at = least(coalesce(o.queued_at, coalesce(p_at, p_now)), coalesce(p_at, p_now)),
            callback_caller_id = coalesce(v_caller, c.callback_caller_id),
            call_delay_sec = coalesce(p_delay, c.call_delay_sec),
            priority_initial = CASE WHEN p_pi IS NULL THEN c.priority_initial ELSE greatest(o.priority_initial, p_pi) END,
            priority_acceleration = CASE WHEN p_pi IS NULL THEN c.priority_acceleration
                                         ELSE greatest(o.priority_acceleration, p_pa) END,
            priority_max = CASE WHEN p_pi IS NULL THEN c.priority_max ELSE greatest(o.priority_max, p_pm) END,
            callback_options = CASE WHEN p_data IS NULL THEN c.callback_options
                                    ELSE (coalesce(nullif(o.callback_options, '')::jsonb, '{}'::jsonb)
                                          || jsonb_build_object('data', p_data::jsonb))::text END
         WHERE c.id = o.id;
        cid := o.id;
        outcome := 'joined';
        state := o.state;
        not_before := o.not_before;
        expire_at := o.expire_at;
        IF p_operator IS NOT NULL THEN
            INSERT INTO audit_log (at, operator, action, target, detail)
                 VALUES (p_now, left(p_operator, 64), 'callback schedule', 'contact ' || cid,
                         p_number || ' on ' || p_skill || ': joined the open callback of contact ' || cid);
        END IF;
    ELSE
        IF p_per_number > 0 THEN
            SELECT count(*) INTO n FROM contacts c
             WHERE c.callback_number = p_number AND c.callback_requested
               AND (c.outcome IS NULL OR c.outcome <> 'merged') AND c.callback_requested_at >= p_now - interval '1 day';
            IF n >= p_per_number THEN
                outcome := 'per_number';
                RETURN NEXT;
                RETURN;
            END IF;
        END IF;
        IF p_per_caller > 0 THEN
            SELECT count(*) INTO n FROM contacts c
             WHERE c.original_ani = p_number AND c.callback_requested
               AND (c.outcome IS NULL OR c.outcome <> 'merged') AND c.callback_requested_at >= p_now - interval '1 hour';
            IF n >= p_per_caller THEN
                outcome := 'per_caller';
                RETURN NEXT;
                RETURN;
            END IF;
        END IF;
        expire_at := p_expire_at;
        IF expire_at IS NULL THEN
            expire := coalesce(p_expire_after, s.callback_expire_sec);
            IF expire IS NOT NULL AND expire <> 0 THEN
                expire_at := coalesce(p_at, p_now) + make_interval(secs => expire);
            END IF;
        END IF;
        INSERT INTO contacts (direction, state, script, skill_id, original_ani, original_dnis, ani, dnis,
                              priority_initial, priority_acceleration, priority_max, callback_requested,
                              callback_number, callback_caller_id, call_delay_sec, callback_requested_at, attempts,
                              arrived_at, queued_at, not_before, expire_at, controller_id, policy_override,
                              callback_options)
             VALUES ('inbound', 'callback_queued', '(scheduled)', s.id, p_number,
                     coalesce(v_caller, p_number), coalesce(v_caller, p_number),
                     p_number, coalesce(p_pi, 0), coalesce(p_pa, 0), coalesce(p_pm, 0), true, p_number,
                     coalesce(v_caller, p_number), coalesce(p_delay, 0), p_now, 0, p_now,
                     coalesce(p_at, p_now), p_at, expire_at, NULL, p_override, p_options)
          RETURNING id INTO cid;
        outcome := 'new';
        state := 'callback_queued';
        not_before := p_at;
        IF p_operator IS NOT NULL THEN
            INSERT INTO audit_log (at, operator, action, target, detail)
                 VALUES (p_now, left(p_operator, 64), 'callback schedule', 'contact ' || cid, p_new_detail);
        END IF;
    END IF;
    PERFORM pg_notify('esl_cb_wake', 'schedule ' || cid);
    IF p_token IS NOT NULL THEN        -- the API token that booked it sees it; its stream hears of it
        INSERT INTO api_bookings (contact_id, token_id, booked_at) VALUES (cid, p_token, p_now)
            ON CONFLICT DO NOTHING;
        PERFORM esl_cb_event(json_build_object('kind', 'contact', 'id', cid, 'state', state, 'callback', true,
                                               'change', json_build_array('booked'), 'token_id', p_token));
    END IF;
    contact_id := cid;
    n := 0;
    -- Its place, as db/queue_status.py's _status_query counts it (after the join or the insert).
    SELECT c.state, c.skill_id, c.queued_at,
           least(c.priority_initial + c.priority_acceleration
                 * greatest(date_part('epoch', p_now - c.queued_at) / 60.0, 0.0),
                 greatest(c.priority_max, c.priority_initial)) AS p
      INTO me FROM contacts c WHERE c.id = cid;
    state := me.state;
    skill_id := me.skill_id;
    waiting := me.state IN ('queued', 'callback_queued');
    served := me.state IN ('offered', 'connected');
    IF waiting THEN
        p := me.p;
        ahead := (SELECT count(*) FROM contacts x WHERE x.skill_id = me.skill_id
                     AND x.state IN ('queued', 'callback_queued') AND x.priority_acceleration = 0
                     AND x.priority_initial > p)
               + (SELECT count(*) FROM contacts x WHERE x.skill_id = me.skill_id
                     AND x.state IN ('queued', 'callback_queued') AND x.priority_acceleration = 0
                     AND x.priority_initial = p AND (x.queued_at, x.id) < (me.queued_at, cid))
               + (SELECT count(*) FROM contacts x WHERE x.skill_id = me.skill_id
                     AND x.state IN ('queued', 'callback_queued') AND x.priority_acceleration <> 0 AND x.id <> cid
                     AND (least(x.priority_initial + x.priority_acceleration
                                * greatest(date_part('epoch', p_now - x.queued_at) / 60.0, 0.0),
                                greatest(x.priority_max, x.priority_initial)) > p
                          OR (least(x.priority_initial + x.priority_acceleration
                                    * greatest(date_part('epoch', p_now - x.queued_at) / 60.0, 0.0),
                                    greatest(x.priority_max, x.priority_initial)) = p
                              AND (x.queued_at < me.queued_at OR (x.queued_at = me.queued_at AND x.id < cid)))));
    END IF;
    IF waiting OR served THEN
        SELECT count(*) FILTER (WHERE a.state IN ('Available', 'Offered', 'OnCall', 'WrapUp')),
               count(*) FILTER (WHERE a.state = 'Available'
                                  AND (a.offer_not_before IS NULL OR a.offer_not_before <= p_now))
          INTO staffed, available
          FROM agents a JOIN agent_skills g ON g.agent_id = a.id WHERE g.skill_id = me.skill_id;
    END IF;
    RETURN NEXT;
END
$$
"""

# The controllers' claim (and the hangup that claims the next contact) without JIT: with ~13,000
# callbacks waiting, the claim's generic plan is estimated above jit_optimize_above_cost (the
# per-row anti-join of the reserved callbacks is costed for every waiting row, though a LIMIT 1
# reads one), and PostgreSQL compiled it on every call: 1.3-1.5 s of CPU a claim for 0.4 ms of
# execution (measured in benchmarks/api_bench.py's rig, PostgreSQL 15, auto_explain). JIT code is
# not kept between calls, so it can only cost these short statements.
JIT_OFF = ["ALTER FUNCTION esl_cb_claim(timestamptz, text, text) SET jit = off",
           "ALTER FUNCTION esl_cb_complete(bigint, timestamptz, text, text) SET jit = off"]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_BOOK)
        for statement in JIT_OFF:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in JIT_OFF:
            op.execute(statement.replace("SET jit = off", "RESET jit"))
        op.execute("DROP FUNCTION esl_cb_book(text, text, timestamptz, timestamptz, text, integer, double precision, "
                   "double precision, double precision, double precision, timestamptz, boolean, text, text, "
                   "boolean, integer, integer, text, text, bigint, boolean)")
