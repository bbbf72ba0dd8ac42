"""Agents after a call and after a miss (issue 20): wrap-up, the delays, OnBreak after max-no-answer,
the sweep that ends what is due, and the state history's report (migration 0011).

The settings are per skill with per-agent overrides (NULL: the skill's); the skill is the contact's.
Every change here is one guarded UPDATE; the database records it in agent_state_history and applies
a pending logout or break (asked during the call) whenever the agent is freed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select, text, update

from esl_cb.domain.states import CALL_DELAY_REFUSAL, NO_ANSWER_BREAK, Miss
from esl_cb.domain.states import AgentState as A

from .base import StoreBase, StoreError, as_utc, utcnow
from .models import Agent, AgentSkill, Contact, Skill

log = logging.getLogger(__name__)

SETTINGS = ("wrap_up_sec", "reject_delay_sec", "busy_delay_sec", "no_answer_delay_sec", "left_delay_sec",
            "max_no_answer")
DELAY_OF = {Miss.REJECTED: "reject_delay_sec", Miss.BUSY: "busy_delay_sec", Miss.NO_ANSWER: "no_answer_delay_sec",
            Miss.LEFT: "left_delay_sec"}


@dataclass(frozen=True)
class AgentHold:
    """Where an agent went after a call or a miss, and until when (None: until someone changes it)."""
    agent_id: int
    name: str
    state: A
    until: datetime | None
    reason: str | None = None


class AgentStatesStore(StoreBase):
    # Told of each hold with an end (WrapUp, a delay) as it is stored: the controller sets a timer for it
    # (a hold whose transaction did not commit finds nothing to end then).
    hold_listener: Callable[[AgentHold], None] | None = None

    def _held(self, hold: AgentHold | None) -> AgentHold | None:
        if hold is not None and hold.until is not None and self.hold_listener is not None:
            self.hold_listener(hold)
        return hold

    def agent_settings(self, conn, agent_id: int, contact_id: int | None) -> dict[str, int]:
        """The agent's effective settings for the skill of `contact_id` (their first skill without one)."""
        a = conn.execute(select(*[getattr(Agent, s) for s in SETTINGS]).where(Agent.id == agent_id)).first()
        skill = None
        if contact_id is not None:
            skill = conn.execute(select(Contact.skill_id).where(Contact.id == contact_id)).scalar()
        if skill is None:
            skill = conn.execute(select(AgentSkill.skill_id).where(AgentSkill.agent_id == agent_id)
                                 .order_by(AgentSkill.skill_id).limit(1)).scalar()
        s = conn.execute(select(*[getattr(Skill, x) for x in SETTINGS]).where(Skill.id == skill)).first()
        out = {}
        for i, name in enumerate(SETTINGS):
            mine = a[i] if a is not None else None
            out[name] = int(mine if mine is not None else (s[i] if s is not None and s[i] is not None else 0))
        return out

    def _missed(self, conn, agent_id: int | None, contact_id: int, miss: Miss, now: datetime,
                from_states: tuple[A, ...], fenced: bool = True) -> AgentHold | None:
        """The agent missed the contact: Refused for the miss's delay (0: Available at once), or OnBreak
        'no_answer' at their max-no-answer misses in a row. Only from this contact, and only our agent."""
        if agent_id is None:
            return None
        row = conn.execute(select(Agent.name, Agent.missed_in_a_row).where(Agent.id == agent_id)).first()
        if row is None:
            return None
        cfg = self.agent_settings(conn, agent_id, contact_id)
        count = (row.missed_in_a_row or 0) + 1
        delay = cfg[DELAY_OF[miss]]
        if cfg["max_no_answer"] > 0 and count >= cfg["max_no_answer"]:
            hold = AgentHold(agent_id, row.name, A.ON_BREAK, None, NO_ANSWER_BREAK)
        elif delay > 0:
            hold = AgentHold(agent_id, row.name, A.REFUSED, now + timedelta(seconds=delay), miss.value)
        else:
            hold = AgentHold(agent_id, row.name, A.AVAILABLE, None)
        values = dict(state=hold.state.value, state_changed_at=now, contact_id=None, leg_uuid=None,
                      state_until=hold.until, state_reason=hold.reason, missed_in_a_row=count)
        if hold.state is A.AVAILABLE:
            values["available_since"] = now
        q = update(Agent).where(Agent.id == agent_id, Agent.contact_id == contact_id,
                                Agent.state.in_([s.value for s in from_states]))
        if fenced:
            q = q.where(self._owned(Agent.controller_id))
        if conn.execute(q.values(**values)).rowcount != 1:
            return None
        log.info("agent %s -[%s, %d in a row]-> %s%s", row.name, miss.value, count, hold.state.value,
                 f" until {hold.until:%H:%M:%S}" if hold.until else (f" ({hold.reason})" if hold.reason else ""))
        return self._held(hold)

    def _wrap_up(self, conn, agent_id: int | None, contact_id: int, now: datetime) -> AgentHold | None:
        """A conversation ended: WrapUp for the agent's wrap-up time, or None when it is 0 (freed as before)."""
        if agent_id is None:
            return None
        seconds = self.agent_settings(conn, agent_id, contact_id)["wrap_up_sec"]
        if seconds <= 0:
            return None
        until = now + timedelta(seconds=seconds)
        q = update(Agent).where(Agent.id == agent_id, Agent.contact_id == contact_id,
                                Agent.state.in_([A.ON_CALL.value, A.OFFERED.value]), self._owned(Agent.controller_id))
        if conn.execute(q.values(state=A.WRAP_UP.value, state_changed_at=now, state_until=until, state_reason=None,
                                 contact_id=None, leg_uuid=None, missed_in_a_row=0)).rowcount != 1:
            return None
        name = conn.execute(select(Agent.name).where(Agent.id == agent_id)).scalar()
        log.info("agent %s OnCall -[conversation ended]-> WrapUp until %s", name, f"{until:%H:%M:%S}")
        return self._held(AgentHold(agent_id, name, A.WRAP_UP, until))

    def end_holds(self, agent_id: int | None = None, refused_reset: float = 0.0) -> list[str]:
        """WrapUp and delays whose time is over: the agents become Available (a pending state instead:
        the database applies it). The controller's timers call it for one agent, the dispatcher's sweep
        for all (a crash or another controller never leaves an agent held). Refused agents with no end
        (stored before migration 0011, or a script's fault) end after `refused_reset` seconds if set.
        Returns the names freed."""
        now = utcnow()
        held = [A.WRAP_UP.value, A.REFUSED.value]
        due = Agent.state_until.isnot(None) & (Agent.state_until <= now)
        if refused_reset > 0:
            due = due | ((Agent.state == A.REFUSED.value) & Agent.state_until.is_(None)
                         & (Agent.state_changed_at <= now - timedelta(seconds=refused_reset)))
        q = update(Agent).where(Agent.state.in_(held), due)
        if agent_id is not None:
            q = q.where(Agent.id == agent_id)
        with self.engine.begin() as conn:
            rows = conn.execute(q.values(state=A.AVAILABLE.value, state_changed_at=now, available_since=now,
                                         state_until=None, state_reason=None).returning(Agent.name, Agent.state)).all()
        for name, state in rows:
            log.info("agent %s: wrap-up or delay over -> %s", name, state)
        return [r.name for r in rows]

    def report_time_zone(self) -> str:
        """The days of a report: the skills' time zone when they all share one, else UTC."""
        with self.engine.connect() as conn:
            zones = conn.execute(select(Skill.timezone).distinct()).scalars().all()
        return zones[0] if len(zones) == 1 and zones[0] else "UTC"

    def agent_day_report(self, since: date | None = None, agent: str | None = None,
                         tz: str | None = None) -> list[dict]:
        """The view agent_day_report (per agent and day), with each day's breaks by reason. The days are
        those of `tz` (an IANA name; default: report_time_zone()) on PostgreSQL, UTC days on SQLite;
        an interval over midnight counts on each day for its part (migration 0015)."""
        where, params = [], {}
        if since is not None:
            where.append("day >= :since")
            params["since"] = since if self._pg else since.isoformat()
        if agent:
            where.append("agent_name = :agent")
            params["agent"] = agent
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        zone = tz or (self.report_time_zone() if self._pg else "UTC")
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise StoreError(f"time zone {zone!r}: not an IANA time zone name (e.g. Europe/Amsterdam)",
                             where="tz") from None
        if not self._pg and zone not in ("UTC", "Etc/UTC"):
            raise StoreError(f"time zone {zone!r}: days by time zone need PostgreSQL; SQLite reports UTC days",
                             where="tz")
        with self.engine.begin() as conn:
            if self._pg:
                conn.execute(text("SELECT set_config('TimeZone', :tz, true)"), {"tz": zone})   # this transaction
            rows = conn.execute(text(f"SELECT * FROM agent_day_report{cond} ORDER BY day, agent_name"), params).all()
            breaks = conn.execute(text(f"SELECT agent_id, day, reason, seconds FROM agent_day_states{cond}"
                                       f"{' AND' if cond else ' WHERE'} state = 'OnBreak'"), params).all()
        by_day: dict[tuple, dict[str, float]] = {}
        for b in breaks:
            by_day.setdefault((b.agent_id, str(b.day)), {})[b.reason or "-"] = float(b.seconds or 0)
        return [{**r._mapping, "day": str(r.day), "breaks": by_day.get((r.agent_id, str(r.day)), {})} for r in rows]

    def agent_history(self, agent_id: int) -> list:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT * FROM agent_state_history WHERE agent_id = :a ORDER BY at, id"),
                                {"a": agent_id}).all()


def why_not_offered(a, now: datetime) -> str:
    """Why an agent (a row of `agents`) is not being offered, in words for `status`; '' when they are."""
    why = _why_by_state(a, now)
    if getattr(a, "phone_unregistered_since", None) is not None:     # the claim's own test (migration 0013)
        return f"{why}; phone not registered" if why else "phone not registered"
    return why


def _why_by_state(a, now: datetime) -> str:
    until = as_utc(a.state_until)
    pending = f"; {a.pending_state} when the call ends" + (f" ({a.pending_reason})" if a.pending_reason else "") \
        if getattr(a, "pending_state", None) else ""
    if a.state == A.WRAP_UP.value:
        return f"wrap-up until {until:%H:%M:%S}{pending}" if until else f"wrap-up{pending}"
    if a.state == A.REFUSED.value:
        why = {Miss.REJECTED.value: "rejected", Miss.BUSY.value: "busy", Miss.NO_ANSWER.value: "did not answer",
               Miss.LEFT.value: "hung up during CallDelaySec",
               CALL_DELAY_REFUSAL: "accepted a callback whose CallDelaySec is 60 or more: the script's fault"}.get(a.state_reason or "", a.state_reason or "missed")
        return f"delay until {until:%H:%M:%S} ({why})" if until else f"refused ({why}; until made available)"
    if a.state == A.ON_BREAK.value:
        return f"on break ({a.state_reason or 'no reason'})"
    if a.state in (A.LOGGED_OUT.value, A.UNAVAILABLE.value):
        return a.state
    if a.state == A.AVAILABLE.value and a.offer_not_before is not None and as_utc(a.offer_not_before) > now:
        return f"not offered until {as_utc(a.offer_not_before):%H:%M:%S} ({a.state_reason or 'the switch refused to ring them'})"
    return pending.lstrip("; ")
