"""Agent reports by local day, with each interval split at midnight (issue 20's views, mended).

agent_day_states counted a whole interval on the UTC day it started: an agent logged in from 22:00 to
06:00 had eight hours on one day and none on the next, and a contact centre in Amsterdam or Chicago
read days that began at 01:00 or 18:00. Now (PostgreSQL) an interval is cut at each midnight of the
session's TimeZone, so each day gets its own seconds and a day is the reader's: `SET TimeZone =
'Europe/Amsterdam'` before the query (`esl-cb report agents --tz`, defaulting to the skills' time zone
when they share one). On SQLite (the demo) the days are UTC days, cut the same way. The handled and
missed counts of agent_day_report follow the same days.

Revision ID: 0015
Revises: 0014
"""
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# Each state interval of an agent: from its change to the next (open ones end now).
_INTERVALS = """
    SELECT h.agent_id, h.agent_name, h.to_state AS state, h.reason, h.at,
           coalesce(lead(h.at) OVER (PARTITION BY h.agent_id ORDER BY h.at, h.id), {now}) AS until
      FROM agent_state_history h"""

# A date cast to timestamptz is its midnight in the session's TimeZone (23 or 25 hours on a DST day).
PG_DAY_STATES = """
CREATE VIEW agent_day_states AS
WITH i AS (""" + _INTERVALS.format(now="now()") + """),
p AS (
    SELECT i.agent_id, i.agent_name, i.state, i.reason, i.at::date + n AS day,
           greatest(i.at, (i.at::date + n)::timestamptz) AS s,
           least(i.until, (i.at::date + n + 1)::timestamptz) AS e
      FROM i CROSS JOIN LATERAL generate_series(0, greatest(i.until::date - i.at::date, 0)) AS n
     WHERE n = 0 OR (i.at::date + n)::timestamptz < i.until)
SELECT agent_id, agent_name, day, state, reason, sum(extract(epoch FROM e - s)) AS seconds
  FROM p GROUP BY agent_id, agent_name, day, state, reason
"""

# Julian day numbers throughout (the stored text's format never matters); date() of one is its day.
SQLITE_DAY_STATES = """
CREATE VIEW agent_day_states AS
WITH RECURSIVE i AS (""" + _INTERVALS.format(now="strftime('%Y-%m-%d %H:%M:%f', 'now')") + """),
p(agent_id, agent_name, state, reason, s, e, u) AS (
    SELECT agent_id, agent_name, state, reason, julianday(at),
           min(julianday(until), julianday(date(at), '+1 day')), julianday(until) FROM i
    UNION ALL
    SELECT agent_id, agent_name, state, reason, e, min(u, julianday(date(e), '+1 day')), u FROM p WHERE e < u)
SELECT agent_id, agent_name, date(s) AS day, state, reason, sum((e - s) * 86400.0) AS seconds
  FROM p GROUP BY agent_id, agent_name, date(s), state, reason
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

# As migration 0011 left them (an interval on the UTC day it started).
_OLD_SECONDS = {"postgresql": "extract(epoch FROM (until) - (at))",
                "sqlite": "(julianday(until) - julianday(at)) * 86400.0"}
_OLD_DAY = {"postgresql": "(({t}) AT TIME ZONE 'UTC')::date", "sqlite": "date({t})"}
_OLD_NOW = {"postgresql": "now()", "sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')"}
OLD_DAY_STATES = """
CREATE VIEW agent_day_states AS
SELECT agent_id, agent_name, {day} AS day, state, reason, sum({seconds}) AS seconds
  FROM (SELECT h.agent_id, h.agent_name, h.to_state AS state, h.reason, h.at,
               coalesce(lead(h.at) OVER (PARTITION BY h.agent_id ORDER BY h.at, h.id), {now}) AS until
          FROM agent_state_history h) i
 GROUP BY agent_id, agent_name, {day}, state, reason
"""


def _drop() -> None:
    op.execute("DROP VIEW agent_day_report")
    op.execute("DROP VIEW agent_day_states")


def upgrade() -> None:
    d = op.get_bind().dialect.name
    _drop()
    op.execute(PG_DAY_STATES if d == "postgresql" else SQLITE_DAY_STATES)
    op.execute(DAY_REPORT.format(day_h="h.at::date" if d == "postgresql" else "date(h.at)"))


def downgrade() -> None:
    d = op.get_bind().dialect.name
    _drop()
    op.execute(OLD_DAY_STATES.format(day=_OLD_DAY[d].format(t="at"), seconds=_OLD_SECONDS[d], now=_OLD_NOW[d]))
    op.execute(DAY_REPORT.format(day_h=_OLD_DAY[d].format(t="h.at")))
