"""Agents and skills: added, removed, made available or not by an operator."""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Iterable

from sqlalchemy import insert, select, text, update

from esl_cb.domain.hours import HoursError, OpeningHours
from esl_cb.domain.phones import tracked_phone
from esl_cb.domain.states import AgentState as A

from .agent_states import why_not_offered
from .base import NotFound, StaleState, StoreBase, StoreError, as_utc, utcnow
from .models import Agent, AgentSkill, Skill

log = logging.getLogger(__name__)

# An operator's state change on PostgreSQL in one statement, in its own transaction: the row locked
# and read, changed only from an allowed state, the audit row and the controllers' wake-up (NOTIFY,
# delivered at its commit) with it. One round trip for the operator's tool: under load each round trip
# of a normal-priority process waits for a CPU (issue 12).
_PG_SET_STATE = text("""
WITH a AS (SELECT id, state FROM agents WHERE name = :name FOR UPDATE),
u AS (
    UPDATE agents SET state = :to, state_changed_at = :now,
        available_since = CASE WHEN :to = 'Available' THEN :now ELSE agents.available_since END,
        missed_in_a_row = CASE WHEN :to = 'Available' THEN 0 ELSE agents.missed_in_a_row END,
        state_reason = coalesce(:reason, :hold_why), state_until = NULL,
        offer_not_before = CASE WHEN :hold_why IS NOT NULL THEN CAST(:hold_until AS timestamptz)
                                ELSE agents.offer_not_before END,
        pending_state = CASE WHEN :keep_pending THEN agents.pending_state END,
        pending_reason = CASE WHEN :keep_pending THEN agents.pending_reason END
    FROM a WHERE agents.id = a.id AND a.state <> :to AND a.state = ANY(:allowed)
    RETURNING agents.id),
p AS (
    UPDATE agents SET pending_state = :to, pending_reason = :reason
    FROM a WHERE agents.id = a.id AND a.state = ANY(:later)
    RETURNING agents.id),
audit AS (
    INSERT INTO audit_log (at, operator, action, target, detail)
    SELECT :now, :operator, 'agent state', :target,
           a.state || ' -> ' || :to || coalesce(' (' || :reason || ')', '')
                   || CASE WHEN EXISTS (SELECT 1 FROM p) THEN ' when the call ends' ELSE '' END
      FROM a WHERE :operator IS NOT NULL AND (EXISTS (SELECT 1 FROM u) OR EXISTS (SELECT 1 FROM p))),
wake AS (SELECT pg_notify(:channel, :what) FROM u)
SELECT a.state AS before, (SELECT count(*) FROM u) + (SELECT count(*) FROM p) AS changed,
       (SELECT count(*) FROM p) AS pending, (SELECT count(*) FROM wake) AS woken FROM a
""")


class AgentsStore(StoreBase):
    """Agents and their skills (SPEC 3): the operator's side."""

    def add_skill(self, name: str) -> int:
        with self.engine.begin() as conn:
            return self.skill_id(conn, name)

    def set_skill_hours(self, name: str, week: str | None = None, tz: str | None = None, closed: str | None = None,
                        expire_after: int | None = None, operator: str | None = None) -> OpeningHours:
        """Opening hours, time zone, closed dates and the default callback expiry of a skill (what is
        not given stays). Raises HoursError naming what cannot be read."""
        with self.engine.begin() as conn:
            row = conn.execute(select(Skill.__table__).where(Skill.name == name)).first()
            if row is None:
                raise NotFound(f"no skill named {name!r} (esl-cb skill add {name})")
            values = {k: v for k, v in (("hours", week), ("timezone", tz), ("closed_dates", closed)) if v is not None}
            if expire_after is not None:
                values["callback_expire_sec"] = expire_after or None
            try:
                hours = OpeningHours.parse(values.get("hours", row.hours), values.get("timezone", row.timezone),
                                           values.get("closed_dates", row.closed_dates))
            except HoursError as e:
                raise HoursError(f"skill {name}: {e}") from None
            values["callbacks_open"] = hours.is_open(utcnow())
            conn.execute(update(Skill).where(Skill.id == row.id).values(**values))
            self._audit(conn, operator, "skill hours", name, hours.describe())
            return hours

    def skill_calendars(self) -> list[tuple[int, str, OpeningHours, bool]]:
        """(id, name, hours, callbacks_open as stored) of every skill."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(Skill.__table__).order_by(Skill.name)).all()
        out = []
        for r in rows:
            try:
                hours = OpeningHours.parse(r.hours, r.timezone, r.closed_dates)
            except HoursError as e:              # written by hand in the database: say so, keep it open
                log.error("skill %s: its opening hours cannot be read (%s); treated as always open", r.name, e)
                hours = OpeningHours()
            out.append((r.id, r.name, hours, bool(r.callbacks_open)))
        return out

    def set_callbacks_open(self, skill_id: int, is_open: bool) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(Skill).where(Skill.id == skill_id).values(callbacks_open=is_open))

    def list_skills(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(Skill.name).order_by(Skill.name)).scalars())

    def add_agent(self, name: str, dial_string: str, skills: Iterable[str], operator: str | None = None) -> int:
        with self.engine.begin() as conn:
            if conn.execute(select(Agent.id).where(Agent.name == name)).scalar() is not None:
                raise StoreError(f"agent {name!r} already exists; remove it first or pick another name")
            phone = tracked_phone(dial_string)        # offered only while registered (migration 0013)
            aid = conn.execute(insert(Agent).values(
                name=name, dial_string=dial_string, state=A.LOGGED_OUT.value, state_changed_at=utcnow(),
                phone_user=phone.user if phone else None, phone_domain=phone.domain if phone else None,
            ).returning(Agent.id)).scalar()
            for s in skills:
                conn.execute(insert(AgentSkill).values(agent_id=aid, skill_id=self.skill_id(conn, s)))
            self._audit(conn, operator, "agent add", name, f"{dial_string}; skills {', '.join(skills)}")
            return aid

    def remove_agent(self, name: str, operator: str | None = None) -> None:
        with self.engine.begin() as conn:
            row = conn.execute(select(Agent.id, Agent.state).where(Agent.name == name)).first()
            if row is None:
                raise NotFound(f"no agent named {name!r}")
            if row.state in (A.OFFERED.value, A.ON_CALL.value):
                raise StaleState(f"agent {name!r} is {row.state}; make them unavailable and wait for the call to end")
            conn.execute(AgentSkill.__table__.delete().where(AgentSkill.agent_id == row.id))
            conn.execute(Agent.__table__.delete().where(Agent.id == row.id))
            self._audit(conn, operator, "agent remove", name)

    def agent(self, name: str):
        with self.engine.connect() as conn:
            row = conn.execute(select(Agent.__table__).where(Agent.name == name)).first()
        if row is None:
            raise NotFound(f"no agent named {name!r}")
        return row

    def agents(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(Agent.__table__).order_by(Agent.name)).all()
            skills = conn.execute(select(AgentSkill.agent_id, Skill.name).join(Skill)).all()
        by_agent: dict[int, list[str]] = {}
        for aid, sname in skills:
            by_agent.setdefault(aid, []).append(sname)
        now = utcnow()
        return [{"id": a.id, "name": a.name, "dial_string": a.dial_string, "state": a.state,
                 "state_changed_at": as_utc(a.state_changed_at), "available_since": as_utc(a.available_since),
                 "contact_id": a.contact_id, "skills": sorted(by_agent.get(a.id, [])),
                 "state_reason": a.state_reason, "state_until": as_utc(a.state_until),
                 "pending_state": a.pending_state, "pending_reason": a.pending_reason,
                 "missed_in_a_row": a.missed_in_a_row,
                 "phone": (f"{a.phone_user}@{a.phone_domain}" if a.phone_domain else a.phone_user),
                 "login_number": a.login_number,
                 "not_offered_because": why_not_offered(a, now)} for a in rows]

    def set_agent_state(self, name: str, to: A, allowed_from: Iterable[A], operator: str | None = None) -> A:
        """change_agent_state without reason: a forced move (the demo's, tests' stand-in for the call's end),
        so a pending state is kept and starts if this frees the agent. The state before."""
        return self.change_agent_state(name, to, allowed_from, operator, keep_pending=True)[0]

    def change_agent_state(self, name: str, to: A, allowed_from: Iterable[A], operator: str | None = None,
                           reason: str | None = None, later_from: Iterable[A] = (),
                           keep_pending: bool = False, hold: tuple[float, str] | None = None) -> tuple[A, bool]:
        """Operator-driven agent state change (CLI, API, the agent's phone); refused with the reason when
        not allowed. From a state in `later_from` (on a call) it is stored as pending, and the database
        applies it when the call ends. A change made now drops a pending one (the agent's latest word
        wins) unless `keep_pending` (the end of wrap-up: the logout asked during the call starts now).
        `hold` (seconds, why): not offered for that long, in the same statement (so no claim comes
        between). Returns (the state before, whether it waits for the call's end). The controllers are
        woken (NOTIFY) by the same commit."""
        allowed = [s.value for s in allowed_from]
        later = [s.value for s in later_from]
        reason = reason.strip()[:64] if reason and reason.strip() else None
        if self._pg:
            with self._autocommit.connect() as conn:
                row = conn.execute(_PG_SET_STATE, {
                    "name": name, "to": to.value, "now": utcnow(), "allowed": allowed, "later": later,
                    "reason": reason, "operator": operator[:64] if operator else None, "target": name[:255],
                    "channel": self.NOTIFY_CHANNEL, "what": f"agent {name}"[:100],
                    "keep_pending": keep_pending, "hold_why": hold[1][:64] if hold else None,
                    "hold_until": utcnow() + timedelta(seconds=hold[0]) if hold else None}).first()
            _check_change(name, row.before if row else None, to, allowed + later, bool(row and row.changed))
            before, pending = row.before, bool(row.pending)
        else:
            with self.engine.begin() as conn:
                row = conn.execute(select(Agent.id, Agent.state).where(Agent.name == name)).first()
                _check_change(name, row.state if row else None, to, allowed + later, True)
                pending = row.state in later
                if pending:
                    values = dict(pending_state=to.value, pending_reason=reason)
                else:
                    values = dict(state=to.value, state_changed_at=utcnow(), state_reason=reason, state_until=None)
                    if not keep_pending:
                        values.update(pending_state=None, pending_reason=None)
                    if hold:
                        values.update(offer_not_before=utcnow() + timedelta(seconds=hold[0]),
                                      state_reason=reason or hold[1][:64])
                    if to is A.AVAILABLE:
                        values.update(available_since=utcnow(), missed_in_a_row=0)
                res = conn.execute(update(Agent).where(Agent.id == row.id, Agent.state == row.state).values(**values))
                _check_change(name, row.state, to, allowed + later, res.rowcount == 1)
                self._audit(conn, operator, "agent state", name, f"{row.state} -> {to.value}"
                            + (f" ({reason})" if reason else "") + (" when the call ends" if pending else ""))
                self._notify(conn, f"agent {name}")          # the controllers hear of it at commit
                before = row.state
        log.info("agent %s %s -[operator %s]-> %s%s%s", name, before, operator or "", to.value,
                 f" ({reason})" if reason else "", " when the call ends" if pending else "")
        return A(before), pending

    def set_agent_settings(self, name: str, values: dict[str, int | None], operator: str | None = None,
                           skill: bool = False) -> None:
        """Wrap-up, delays and max-no-answer of a skill (`skill`) or an agent (None: the skill's)."""
        model = Skill if skill else Agent
        with self.engine.begin() as conn:
            if conn.execute(update(model).where(model.name == name).values(**values)).rowcount != 1:
                raise NotFound(f"no {'skill' if skill else 'agent'} named {name!r}")
            self._audit(conn, operator, f"{'skill' if skill else 'agent'} settings", name,
                        ", ".join(f"{k}={v}" for k, v in values.items()))


def _check_change(name: str, before: str | None, to: A, allowed: list[str], changed: bool) -> None:
    """Why an operator's state change was refused (nothing was changed then)."""
    if before is None:
        raise NotFound(f"no agent named {name!r}")
    if before == to.value:
        raise StaleState(f"agent {name!r} is already {to.value}")
    if before not in allowed:
        raise StaleState(f"agent {name!r} is {before}; it cannot go to {to.value} now")
    if not changed:
        raise StaleState(f"agent {name!r} changed state meanwhile; try again")
