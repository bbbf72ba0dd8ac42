"""Offers: a waiting contact and a free agent claimed for each other in one statement, and what
the agent's phone does with it (declined, answered live, answered for a callback), and the end of a
conversation, which claims the freed agent's next contact in the same transaction."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import text, update

from esl_cb.domain.states import AgentState as A
from esl_cb.domain.states import ContactState as C
from esl_cb.domain.states import Outcome

from esl_cb.domain.states import CALL_DELAY_REFUSAL, Miss

from .agent_states import AgentHold, AgentStatesStore
from .base import DialPlan, Offer, utcnow
from .models import Agent, Contact

log = logging.getLogger(__name__)

_PG_CLAIM = text("SELECT * FROM esl_cb_claim(:now, :leg, :ctl)")
# The best pair this controller may offer (a live caller only by the controller that holds the call).
_CLAIM_NEXT = text("SELECT * FROM claim_queue WHERE held_by IS NULL OR held_by = :ctl LIMIT 1")
_PG_COMPLETE = text("SELECT * FROM esl_cb_complete(:id, :now, :leg, :ctl)")
# An agent answered a callback offer: accepted (the due time stored), the agent OnCall, their leg
# billed, and the coming attempt prepared with its origination uuid, in one statement: one round trip
# where accept_callback and prepare_dial took eleven (issue 12). Fenced: our contact and our agent.
_PG_ACCEPT = text("""
WITH ok AS (
    SELECT c.id FROM contacts c JOIN agents a ON a.id = :agent AND a.state = 'Offered' AND a.contact_id = c.id
    WHERE c.id = :cid AND c.state = 'offered' AND c.callback_leg_uuid IS NULL
      AND (:ctl = '' OR (c.controller_id = :ctl AND a.controller_id = :ctl))
    FOR UPDATE OF c, a),
ag AS (
    UPDATE agents SET state = 'OnCall', state_changed_at = :now, missed_in_a_row = 0
     WHERE id = :agent AND EXISTS (SELECT 1 FROM ok)),
n AS (
    SELECT coalesce(max(attempt_no), 0) + 1 AS no FROM callback_attempts WHERE contact_id = :cid),
c AS (
    UPDATE contacts SET state = 'accepted', accepted_at = :now, dial_due_at = :due, attempts = attempts + 1,
           callback_leg_uuid = :leg
    WHERE id = :cid AND state = 'offered' AND EXISTS (SELECT 1 FROM ok) RETURNING *),
l AS (
    INSERT INTO legs (uuid, contact_id, kind, direction, agent_id, from_number, to_number, started_at, answered_at)
    SELECT :agent_leg, c.id, 'agent', 'outbound', :agent, :frm, :to, :now, :now FROM c),
att AS (
    INSERT INTO callback_attempts (contact_id, attempt_no, leg_uuid, agent_id, number, caller_id, started_at)
    SELECT c.id, n.no, :leg, c.agent_id, c.callback_number, c.callback_caller_id, :due FROM c, n)
SELECT c.*, n.no AS attempt_no FROM c, n
""")


class DispatchStore(AgentStatesStore):
    """Claims, offers and the end of conversations."""

    def claim_offer(self, new_leg_uuid: str) -> Offer | None:
        """Pick the best waiting contact and the longest-idle available agent with its skill,
        and mark both Offered in one transaction. None when nothing can be matched."""
        now = utcnow()
        if self._pg:
            with self._autocommit.connect() as conn:
                row = conn.execute(_PG_CLAIM, {"now": now, "leg": new_leg_uuid, "ctl": self.controller_id}).first()
            return self._claimed(row, new_leg_uuid)
        with self.engine.begin() as conn:
            return self._claim(conn, new_leg_uuid, now)

    @staticmethod
    def _offer(pair, leg_uuid: str) -> Offer:
        """The Offer of a claimed pair (a row shaped like esl_cb_claim's result)."""
        return Offer(pair.contact_id, pair.agent_id, pair.agent_name, pair.dial_string, leg_uuid,
                     pair.contact_state == C.CALLBACK_QUEUED.value, pair.caller_uuid,
                     pair.callback_number or pair.original_ani, pair.skill)

    @classmethod
    def _claimed(cls, row, leg_uuid: str) -> Offer | None:
        if row is None or row.contact_id is None:
            return None
        log.info("contact %s %s -[offer to %s]-> offered", row.contact_id, row.contact_state, row.agent_name)
        log.info("agent %s Available -[offer contact %s]-> Offered", row.agent_name, row.contact_id)
        return cls._offer(row, leg_uuid)

    def _claim(self, conn, new_leg_uuid: str, now: datetime) -> Offer | None:
        # The view claim_queue (migrations 0007, 0008) orders the queue and says who may be offered;
        # PostgreSQL's esl_cb_claim gives the same pair from indexes (0010), tests hold both to
        # order_key. SQLite has one writer at a time, so no row locks.
        pair = conn.execute(_CLAIM_NEXT, {"ctl": self.controller_id}).first()
        if pair is None:
            return None
        got_agent = conn.execute(update(Agent).where(
            Agent.id == pair.agent_id, Agent.state == A.AVAILABLE.value).values(
            state=A.OFFERED.value, state_changed_at=now, contact_id=pair.contact_id, leg_uuid=new_leg_uuid,
            controller_id=self.controller_id)).rowcount == 1
        if not got_agent or not self._move(conn, pair.contact_id, [C(pair.contact_state)], C.OFFERED,
                                           f"offer to {pair.agent_name}", fenced=False,       # takes it
                                           offered_at=now, agent_id=pair.agent_id,
                                           agent_leg_uuid=new_leg_uuid, controller_id=self.controller_id):
            conn.rollback()       # without row locks someone else took one of the two
            return None
        log.info("agent %s Available -[offer contact %s]-> Offered", pair.agent_name, pair.contact_id)
        return self._offer(pair, new_leg_uuid)

    def offer_failed(self, offer: Offer, refused: bool, reason: str, not_before: float = 0.0,
                     miss: Miss | None = None) -> AgentHold | None:
        """The agent declined, did not answer, or could not be rung: the contact keeps its place.
        `refused` (the agent's phone said no: `miss` says how, no answer by default): the agent's delay
        for that miss, or OnBreak at their max-no-answer (agent_states.py); returned, for a timer.
        Otherwise Available again, and with `not_before` (seconds) not offered before then (the switch
        was full)."""
        now = utcnow()
        with self.engine.begin() as conn:
            row = self._lock_contact(conn, offer.contact_id)
            back = C.CALLBACK_QUEUED if row and row.callback_requested else C.QUEUED
            self._move(conn, offer.contact_id, [C.OFFERED], back, reason, agent_id=None, agent_leg_uuid=None)
            if refused:
                return self._missed(conn, offer.agent_id, offer.contact_id, miss or Miss.NO_ANSWER, now, (A.OFFERED,))
            res = conn.execute(update(Agent).where(Agent.id == offer.agent_id, Agent.state == A.OFFERED.value,
                                                   Agent.contact_id == offer.contact_id,
                                                   self._owned(Agent.controller_id)).values(
                state=A.AVAILABLE.value, state_changed_at=now, contact_id=None, leg_uuid=None,
                offer_not_before=now + timedelta(seconds=not_before) if not_before > 0 else None,
                state_reason=reason[:64] if not_before > 0 else None))       # why not offered meanwhile
            if res.rowcount == 1:
                log.info("agent %s Offered -[%s]-> Available%s", offer.agent_name, reason,
                         f" (not offered for {not_before:g}s)" if not_before > 0 else "")
            return None

    def accept_live(self, offer: Offer) -> bool:
        now = utcnow()
        with self.engine.begin() as conn:
            res = conn.execute(update(Contact).where(
                Contact.id == offer.contact_id, Contact.state == C.OFFERED.value,
                Contact.callback_requested.is_(False), self._owned(Contact.controller_id)).values(
                state=C.CONNECTED.value, accepted_at=now, connected_at=now))
            if res.rowcount != 1:
                self._check_owner(conn, offer.contact_id, f"agent {offer.agent_name} answered")
                return False
            log.info("contact %s offered -[agent %s answered]-> connected", offer.contact_id, offer.agent_name)
            self._agent_on_call(conn, offer, now)
            self._add_leg(conn, offer.agent_leg_uuid, offer.contact_id, "agent", offer.agent_id,
                          offer.contact_number, offer.dial_string, now)
            return True

    def accept_callback(self, offer: Offer, delay: int, answered_at: datetime | None = None) -> datetime | None:
        """Agent answered a callback offer: the CallDelaySec timer is persisted as a due time,
        counted from the moment the agent answered."""
        now = utcnow()
        due = (answered_at or now) + timedelta(seconds=delay)
        with self.engine.begin() as conn:
            if not self._move(conn, offer.contact_id, [C.OFFERED], C.ACCEPTED, f"agent {offer.agent_name} answered",
                              accepted_at=now, dial_due_at=due):
                return None
            self._agent_on_call(conn, offer, now)
            self._add_leg(conn, offer.agent_leg_uuid, offer.contact_id, "agent", offer.agent_id,
                          offer.contact_number, offer.dial_string, now)
            return due

    def accept_and_prepare(self, offer: Offer, delay: int, answered_at: datetime | None,
                           leg_uuid: str) -> tuple[datetime, DialPlan | None] | None:
        """accept_callback and prepare_dial together: (due time, the prepared dial), or None when the
        offer is no longer this agent's. PostgreSQL: one statement; elsewhere the two transactions."""
        if not self._pg:
            due = self.accept_callback(offer, delay, answered_at)
            return None if due is None else (due, self.prepare_dial(offer.contact_id, leg_uuid))
        now = utcnow()
        due = (answered_at or now) + timedelta(seconds=delay)
        with self._autocommit.connect() as conn:
            row = conn.execute(_PG_ACCEPT, {"cid": offer.contact_id, "agent": offer.agent_id, "now": now, "due": due,
                                            "leg": leg_uuid, "agent_leg": offer.agent_leg_uuid,
                                            "frm": offer.contact_number, "to": offer.dial_string,
                                            "ctl": self.controller_id}).first()
            if row is None:
                self._check_owner(conn, offer.contact_id, f"agent {offer.agent_name} answered")
                return None
        log.info("contact %s offered -[agent %s answered]-> accepted", offer.contact_id, offer.agent_name)
        log.info("agent %s Offered -[answered contact %s]-> OnCall", offer.agent_name, offer.contact_id)
        return due, DialPlan.of(row, row.attempt_no, leg_uuid)

    def refuse_accepted(self, offer: Offer, reason: str, hold_contact_sec: float) -> AgentHold | None:
        """An accepted callback that must not be dialled (CallDelaySec >= 60, SPEC 2 rule 4): the agent
        Refused, the contact keeps its place (priority and queue time unchanged).

        Neither may stay so for ever: the fault is the script's, and a stored delay never changes, so
        the contact would be offered to every agent in turn, each left Refused, until none were left.
        The agent is Refused for their reject delay (then Available by themself; not counted as a
        miss), and the contact is not offered again for `hold_contact_sec` (the retry interval: the
        error is said again then, until an operator cancels or the script is mended)."""
        now = utcnow()
        with self.engine.begin() as conn:
            self._move(conn, offer.contact_id, [C.OFFERED, C.ACCEPTED], C.CALLBACK_QUEUED, reason,
                       agent_id=None, agent_leg_uuid=None, dial_due_at=None, last_error=reason,
                       retry_at=now + timedelta(seconds=hold_contact_sec))
            delay = self.agent_settings(conn, offer.agent_id, offer.contact_id)["reject_delay_sec"]
            until = now + timedelta(seconds=delay) if delay > 0 else None
            state = A.REFUSED if until is not None else A.AVAILABLE
            values = dict(state=state.value, state_changed_at=now, contact_id=None, leg_uuid=None,
                          state_until=until, state_reason=CALL_DELAY_REFUSAL if until is not None else None)
            if until is None:
                values["available_since"] = now
            res = conn.execute(update(Agent).where(Agent.id == offer.agent_id, Agent.contact_id == offer.contact_id,
                                                   self._owned(Agent.controller_id)).values(**values))
            if res.rowcount != 1:
                return None
        log.info("agent %s -[%s]-> %s%s", offer.agent_name, reason, state.value,
                 f" until {until:%H:%M:%S}" if until else "")
        return self._held(AgentHold(offer.agent_id, offer.agent_name, state, until, values["state_reason"]))

    def complete(self, contact_id: int, reason: str, claim_leg_uuid: str | None = None) -> tuple[bool, Offer | None]:
        """A connected contact ended: handled (live) or callback completed. The agent goes WrapUp for
        their wrap-up time (told to `hold_listener`, for a timer), or with none is free again at once: then, with
        `claim_leg_uuid`, the next offer is claimed in the same transaction (one commit on the path from
        a hangup to the next offer). Returns (completed, offer)."""
        now = utcnow()
        if self._pg:
            with self._autocommit.connect() as conn:
                row = conn.execute(_PG_COMPLETE, {"id": contact_id, "now": now, "leg": claim_leg_uuid,
                                                  "ctl": self.controller_id}).one()
                if not row.completed:
                    self._check_owner(conn, contact_id, reason)     # a lost race, or not ours any more
            if not row.completed:
                return False, None
            log.info("contact %s connected -[%s]-> ended", contact_id, reason)
            if row.wrap_up_until is not None:
                log.info("agent %s OnCall -[conversation ended]-> WrapUp until %s", row.agent_id,
                         f"{row.wrap_up_until:%H:%M:%S}")
                self._held(AgentHold(row.agent_id, "", A.WRAP_UP, row.wrap_up_until))
                return True, None
            return True, self._claimed(row, claim_leg_uuid) if claim_leg_uuid else None
        with self.engine.begin() as conn:
            c = self._lock_contact(conn, contact_id)
            if c is None or c.state != C.CONNECTED.value or not self._mine(c, reason):
                return False, None
            outcome = Outcome.CALLBACK_COMPLETED if c.callback_requested else Outcome.HANDLED
            hold = self._wrap_up(conn, c.agent_id, c.id, now)
            if hold is None:
                self._release_agent(conn, c.agent_id, c.id, now, missed_in_a_row=0)
            if not self._move(conn, contact_id, [C.CONNECTED], C.ENDED, reason, outcome=outcome.value, ended_at=now):
                return False, None
            if hold is not None:
                return True, None
            return True, (self._claim(conn, claim_leg_uuid, now) if claim_leg_uuid else None)

    def abandon_offer(self, contact_id: int, reason: str) -> int | None:
        """A live caller hung up while an agent was being offered: returns the agent to release."""
        now = utcnow()
        with self.engine.begin() as conn:
            c = self._lock_contact(conn, contact_id)
            if c is None or c.state != C.OFFERED.value or c.callback_requested or not self._mine(c, reason):
                return None
            self._release_agent(conn, c.agent_id, c.id, now)
            self._move(conn, contact_id, [C.OFFERED], C.ENDED, reason, outcome=Outcome.ABANDONED.value, ended_at=now)
            return c.agent_id

    def live_bridge_failed(self, contact_id: int, agent_leg_uuid: str, caller_gone: bool, reason: str) -> bool:
        """A live caller stored as connected could not be bridged to the agent: the agent is released;
        the caller goes back to the queue with their place (queued_at kept) or, gone, ends abandoned."""
        now = utcnow()
        with self.engine.begin() as conn:
            c = self._lock_contact(conn, contact_id)
            if c is None or c.state != C.CONNECTED.value or c.callback_requested or c.agent_leg_uuid != agent_leg_uuid:
                return False
            self._release_agent(conn, c.agent_id, c.id, now)
            if caller_gone:
                return self._move(conn, contact_id, [C.CONNECTED], C.ENDED, reason, outcome=Outcome.ABANDONED.value,
                                  ended_at=now, last_error=reason)
            return self._move(conn, contact_id, [C.CONNECTED], C.QUEUED, reason, agent_id=None, agent_leg_uuid=None,
                              accepted_at=None, connected_at=None, last_error=reason)
