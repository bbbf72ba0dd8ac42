"""A supervisor's changes to a waiting callback (priority, time, the agent it is reserved for) and a
skill's outbound caller ID (migration 0008). Each change is one transaction with its audit row and
the NOTIFYs that wake the controllers and tell the live event stream."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from sqlalchemy import delete, insert, select, text, update

from esl_cb.domain.errors import InvalidInput
from esl_cb.domain.states import ContactState as C

from .base import NotFound, StaleState, StoreBase, UnknownSkill, as_utc, utcnow
from .models import Agent, AgentSkill, CallbackAssignment, Contact, Skill

log = logging.getLogger(__name__)
EVENTS_CHANNEL = "esl_cb_events"      # what migration 0008's triggers NOTIFY on
UNCHANGED = object()                  # a field not given (None clears not_before and the agent)


class CallbackChangesStore(StoreBase):
    """Changes to waiting callbacks; skills' outbound caller IDs."""

    def change_callback(self, contact_id: int, *, priority: float | None = None, not_before=UNCHANGED,
                        agent=UNCHANGED, operator: str | None = None) -> dict:
        """Change a callback while it waits (callback_queued): `priority` a fixed priority (initial =
        maximum, no acceleration); `not_before` an aware datetime or None (as soon as possible);
        `agent` the name of an agent of its skill who alone is offered it, or None (anyone).
        NotFound; StaleState (wrong_state) once an agent has it or it ended. Returns what was done."""
        now = utcnow()
        done: dict = {}
        with self.engine.begin() as conn:
            row = self._lock_contact(conn, contact_id)
            if row is None or not row.callback_requested:
                raise NotFound(f"no callback {contact_id}")
            if row.state != C.CALLBACK_QUEUED.value:
                raise StaleState(f"callback {contact_id} is {row.state}: it can be changed only while it waits "
                                 "(callback_queued)")
            values: dict = {}
            if priority is not None:
                values.update(priority_initial=priority, priority_max=priority, priority_acceleration=0)
                done["priority"] = priority
            if not_before is not UNCHANGED:
                at = not_before.astimezone(timezone.utc) if isinstance(not_before, datetime) else None
                expire_at = as_utc(row.expire_at)
                if at is not None and expire_at is not None and at >= expire_at:
                    raise InvalidInput(f"not_before: callback {contact_id} expires at {expire_at.isoformat()}; "
                                       "not_before must be earlier", where="not_before")
                values["not_before"] = at
                done["not_before"] = at.isoformat() if at else None
            if values:
                conn.execute(update(Contact).where(Contact.id == contact_id).values(**values))
            if agent is not UNCHANGED:
                done["agent"] = self._assign(conn, row, agent, now)
            self._audit(conn, operator, "callback change", f"contact {contact_id}", json.dumps(done, default=str))
            self._notify(conn, f"change {contact_id}")
            self._event(conn, {"kind": "contact", "id": contact_id, "state": row.state, "skill_id": row.skill_id,
                               "agent_id": row.agent_id, "callback": True, "change": sorted(done)})
        log.info("contact %s changed by %s: %s", contact_id, operator or "?", done)
        return done

    def _assign(self, conn, row, agent: str | None, now: datetime) -> str | None:
        conn.execute(delete(CallbackAssignment).where(CallbackAssignment.contact_id == row.id))
        if agent is None:
            return None
        a = conn.execute(select(Agent.id).where(Agent.name == agent)).first()
        if a is None:
            raise InvalidInput(f"agent: no agent named {agent!r}", where="agent")
        has_skill = conn.execute(select(AgentSkill.agent_id).where(AgentSkill.agent_id == a.id,
                                                                   AgentSkill.skill_id == row.skill_id)).first()
        if has_skill is None:
            skill = conn.execute(select(Skill.name).where(Skill.id == row.skill_id)).scalar()
            raise InvalidInput(f"agent: {agent!r} does not have the skill {skill!r} of callback {row.id}",
                               where="agent")
        conn.execute(insert(CallbackAssignment).values(contact_id=row.id, agent_id=a.id, assigned_at=now))
        return agent

    def assignments(self, contact_ids: list[int] | None = None) -> dict[int, str]:
        """contact id -> the agent it is reserved for."""
        with self.engine.connect() as conn:
            q = select(CallbackAssignment.contact_id, Agent.name).join(Agent, Agent.id == CallbackAssignment.agent_id)
            if contact_ids is not None:
                q = q.where(CallbackAssignment.contact_id.in_(contact_ids))
            return dict(conn.execute(q).all())

    def _event(self, conn, doc: dict) -> None:
        """Tell the live event stream (the triggers do it for changes of state only)."""
        if self._pg:           # kept for replay and NOTIFYed on EVENTS_CHANNEL (migration 0012)
            conn.execute(text("SELECT esl_cb_event(CAST(:d AS json))"), {"d": json.dumps(doc)})

    # -- outbound caller IDs ----------------------------------------------------------------------
    def set_outbound_caller_id(self, skill: str, number: str | None, operator: str | None = None) -> None:
        with self.engine.begin() as conn:
            n = conn.execute(update(Skill).where(Skill.name == skill).values(outbound_caller_id=number)).rowcount
            if n != 1:
                raise UnknownSkill(f"no skill named {skill!r} (esl-cb skill add {skill})", where="skill")
            self._audit(conn, operator, "skill caller id", skill, number or "(none)")

    def outbound_caller_ids(self) -> dict[str, str | None]:
        """skill name -> its outbound caller ID (None: none set)."""
        with self.engine.connect() as conn:
            return dict(conn.execute(select(Skill.name, Skill.outbound_caller_id)).all())

    def outbound_caller_id(self, skill: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(Skill.outbound_caller_id).where(Skill.name == skill)).scalar()


def contact_outbound_caller_id(store: StoreBase, contact_id: int) -> str | None:
    """The outbound caller ID of the skill a contact is queued for (None: no skill, or none set).
    A function, so the controller's Store needs no new base for it (esl_cb/controller/ports.py)."""
    with store.engine.connect() as conn:
        return conn.execute(select(Skill.outbound_caller_id).join(Contact, Contact.skill_id == Skill.id).where(
            Contact.id == contact_id)).scalar()
