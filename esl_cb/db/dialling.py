"""A callback's dial: the attempt prepared when the agent accepts (with its origination uuid),
the dial sent, answered or not, and each leg's end for billing."""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import func, insert, select, text, update

from esl_cb.domain.states import AgentState as A
from esl_cb.domain.states import ContactState as C
from esl_cb.domain.states import Miss, Outcome

from .agent_states import AgentStatesStore
from .base import DialPlan, as_utc, utcnow
from .models import CallbackAttempt, Contact, Leg, PolicyRefusal

log = logging.getLogger(__name__)
# The customer answered: connected, the leg's answer billed, the attempt marked, in one statement
# (fenced: our contact).
_PG_ANSWERED = text("""
WITH c AS (
    UPDATE contacts SET state = 'connected', connected_at = :now, confirmed = :confirmed
    WHERE id = :cid AND callback_leg_uuid = :leg AND state IN ('dialling', 'accepted')
      AND (:ctl = '' OR controller_id = :ctl)
    RETURNING id, agent_id, callback_caller_id, callback_number),
l AS (
    INSERT INTO legs (uuid, contact_id, kind, direction, agent_id, from_number, to_number, started_at, answered_at)
    SELECT :leg, c.id, 'callback', 'outbound', c.agent_id, c.callback_caller_id, c.callback_number, :now, :now FROM c
    ON CONFLICT (uuid) DO UPDATE SET answered_at = EXCLUDED.answered_at),
a AS (
    UPDATE callback_attempts SET result = 'answered', confirmed = :confirmed
    WHERE leg_uuid = :leg AND EXISTS (SELECT 1 FROM c))
SELECT count(*) AS n FROM c
""")


class DiallingStore(AgentStatesStore):
    """Callback attempts and legs (the billing view)."""

    def prepare_dial(self, contact_id: int, leg_uuid: str) -> DialPlan | None:
        """Persist the coming attempt, with its origination uuid, when the agent accepts: at the due
        time the originate goes out with no database work in the way, and after a crash the stored
        uuid decides whether it was sent (it is never sent twice)."""
        with self.engine.begin() as conn:
            c = self._lock_contact(conn, contact_id)
            if c is None or c.state != C.ACCEPTED.value or not self._mine(c, "prepare the dial"):
                return None
            # Rows are numbered by every dial; `attempts` counts only those that count against the
            # limit (an attempt the agent cut short does not).
            row_no = (conn.execute(select(func.max(CallbackAttempt.attempt_no)).where(
                CallbackAttempt.contact_id == contact_id)).scalar() or 0) + 1
            due = as_utc(c.dial_due_at) or utcnow()
            res = conn.execute(update(Contact).where(Contact.id == contact_id, Contact.state == C.ACCEPTED.value,
                                                     Contact.callback_leg_uuid.is_(None)).values(
                attempts=c.attempts + 1, callback_leg_uuid=leg_uuid))
            if res.rowcount != 1:
                return None
            conn.execute(insert(CallbackAttempt).values(
                contact_id=contact_id, attempt_no=row_no, leg_uuid=leg_uuid, agent_id=c.agent_id,
                number=c.callback_number, caller_id=c.callback_caller_id, started_at=due))
            return DialPlan.of(c, row_no, leg_uuid)

    def prepared_plan(self, contact_id: int) -> DialPlan | None:
        with self.engine.connect() as conn:
            c = self._lock_contact(conn, contact_id)
            if c is None or c.state != C.ACCEPTED.value or not c.callback_leg_uuid or not self._mine(c, "the dial"):
                return None
            no = conn.execute(select(CallbackAttempt.attempt_no).where(
                CallbackAttempt.leg_uuid == c.callback_leg_uuid)).scalar()
            return DialPlan.of(c, no or 0, c.callback_leg_uuid)

    def mark_dialling(self, plan: DialPlan) -> bool:
        """Right after the originate went out: the contact is being dialled, and the leg is billed."""
        now = utcnow()
        with self.engine.begin() as conn:
            if not self._move(conn, plan.contact_id, [C.ACCEPTED], C.DIALLING, f"dial attempt {plan.attempt_no}",
                              dialled_at=now):
                return False
            conn.execute(update(CallbackAttempt).where(CallbackAttempt.leg_uuid == plan.leg_uuid).values(
                started_at=now))
            if conn.execute(select(Leg.uuid).where(Leg.uuid == plan.leg_uuid)).scalar() is None:
                conn.execute(insert(Leg).values(uuid=plan.leg_uuid, contact_id=plan.contact_id, kind="callback",
                                                direction="outbound", agent_id=plan.agent_id,
                                                from_number=plan.caller_id, to_number=plan.number, started_at=now))
            return True

    def dial_answered(self, contact_id: int, leg_uuid: str, confirmed: bool | None = None) -> bool:
        """The customer answered (and, with a confirmation, pressed the key): connected."""
        now = utcnow()
        if self._pg:
            with self._autocommit.connect() as conn:
                n = conn.execute(_PG_ANSWERED, {"cid": contact_id, "leg": leg_uuid, "now": now,
                                                "confirmed": confirmed, "ctl": self.controller_id}).scalar()
                if n != 1:
                    self._check_owner(conn, contact_id, "customer answered")
            if n == 1:
                log.info("contact %s dialling -[customer answered]-> connected", contact_id)
            return n == 1
        with self.engine.begin() as conn:
            res = conn.execute(update(Contact).where(
                Contact.id == contact_id, Contact.callback_leg_uuid == leg_uuid,
                Contact.state.in_([C.DIALLING.value, C.ACCEPTED.value]), self._owned(Contact.controller_id)).values(
                state=C.CONNECTED.value, connected_at=now, confirmed=confirmed))
            if res.rowcount != 1:
                self._check_owner(conn, contact_id, "customer answered")
                return False
            log.info("contact %s dialling -[customer answered]-> connected", contact_id)
            if conn.execute(select(Leg.uuid).where(Leg.uuid == leg_uuid)).scalar() is None:
                c = self._lock_contact(conn, contact_id)
                conn.execute(insert(Leg).values(uuid=leg_uuid, contact_id=contact_id, kind="callback",
                                                direction="outbound", agent_id=c.agent_id,
                                                from_number=c.callback_caller_id, to_number=c.callback_number,
                                                started_at=now))
            conn.execute(update(CallbackAttempt).where(CallbackAttempt.leg_uuid == leg_uuid).values(
                result="answered", confirmed=confirmed))
            conn.execute(update(Leg).where(Leg.uuid == leg_uuid).values(answered_at=now))
            return True

    def dial_failed(self, contact_id: int, leg_uuid: str, result: str, retry_after: float, max_attempts: int,
                    counts: bool = True, confirmed: bool | None = None,
                    answered: bool = False) -> Outcome | None:
        """The customer did not answer (or the agent hung up while it rang): release the agent,
        retry later or give up. Returns CALLBACK_FAILED when it gave up. `answered`: the customer
        answered but hung up before the bridge (stored as connected by then)."""
        now = utcnow()
        states = (C.CONNECTED.value,) if answered else (C.DIALLING.value, C.ACCEPTED.value)
        with self.engine.begin() as conn:
            c = self._lock_contact(conn, contact_id)
            if c is None or c.state not in states or c.callback_leg_uuid != leg_uuid:
                return None     # an older attempt reporting late: the contact has moved on
            if not self._mine(c, result):
                return None
            # An answered attempt keeps the confirmed its answer stored; the contact's is cleared (it
            # was not connected after all).
            done = dict(result=result, ended_at=now) if answered else dict(result=result, ended_at=now,
                                                                            confirmed=confirmed)
            conn.execute(update(CallbackAttempt).where(CallbackAttempt.leg_uuid == leg_uuid).values(**done))
            attempts = c.attempts if counts else max(c.attempts - 1, 0)
            self._release_agent(conn, c.agent_id, c.id, now)
            if attempts >= max_attempts:
                self._move(conn, contact_id, [C(c.state)], C.ENDED, f"{result}, attempt {attempts} of {max_attempts}",
                           outcome=Outcome.CALLBACK_FAILED.value, ended_at=now, attempts=attempts,
                           last_error=result, agent_leg_uuid=None, connected_at=None,
                           **({"confirmed": None} if answered else {}))
                return Outcome.CALLBACK_FAILED
            self._move(conn, contact_id, [C(c.state)], C.CALLBACK_QUEUED, f"{result}, retry in {retry_after:g}s",
                       retry_at=now + timedelta(seconds=retry_after) if counts else None, attempts=attempts,
                       agent_id=None, agent_leg_uuid=None, dial_due_at=None, callback_leg_uuid=None,
                       connected_at=None, last_error=result, **({"confirmed": None} if answered else {}))
            return None

    def bridge_failed(self, contact_id: int, leg_uuid: str, reason: str) -> bool:
        """The customer answered but the agent was gone by then: back to the queue, not counted."""
        now = utcnow()
        with self.engine.begin() as conn:
            c = self._lock_contact(conn, contact_id)
            if c is None or c.state != C.CONNECTED.value or c.callback_leg_uuid != leg_uuid:
                return False
            if not self._mine(c, reason):
                return False
            conn.execute(update(CallbackAttempt).where(CallbackAttempt.leg_uuid == leg_uuid).values(
                result="agent_gone", ended_at=now))
            self._release_agent(conn, c.agent_id, c.id, now)
            return self._move(conn, contact_id, [C.CONNECTED], C.CALLBACK_QUEUED, reason,
                              attempts=max(c.attempts - 1, 0), agent_id=None, agent_leg_uuid=None,
                              callback_leg_uuid=None, dial_due_at=None, connected_at=None, confirmed=None,
                              last_error=reason)

    def agent_left_before_dial(self, contact_id: int, reason: str) -> bool:
        """Agent hung up during CallDelaySec: nothing was dialled, the contact keeps its place."""
        now = utcnow()
        with self.engine.begin() as conn:
            c = self._lock_contact(conn, contact_id)
            if c is None or c.state != C.ACCEPTED.value or not self._mine(c, reason):
                return False
            # A miss (the agent's 'left' delay): the same callback is not offered to them again at once.
            self._missed(conn, c.agent_id, c.id, Miss.LEFT, now, (A.ON_CALL, A.OFFERED))
            attempts = c.attempts
            if c.callback_leg_uuid:        # the prepared attempt was never dialled: it does not count
                conn.execute(update(CallbackAttempt).where(CallbackAttempt.leg_uuid == c.callback_leg_uuid).values(
                    result="not_dialled", ended_at=now))
                attempts = max(attempts - 1, 0)
            return self._move(conn, contact_id, [C.ACCEPTED], C.CALLBACK_QUEUED, reason, agent_id=None,
                              agent_leg_uuid=None, dial_due_at=None, callback_leg_uuid=None, attempts=attempts)

    def refuse_dial(self, plan: DialPlan, rule: str, reason: str) -> bool:
        """The destination policy refuses a callback that is due (it changed since the request): nothing
        is dialled, the agent is released and the contact ends as policy_refused."""
        now = utcnow()
        with self.engine.begin() as conn:
            c = self._lock_contact(conn, plan.contact_id)
            if c is None or c.state != C.ACCEPTED.value or c.callback_leg_uuid != plan.leg_uuid:
                return False
            if not self._mine(c, f"policy: {reason}"):
                return False
            conn.execute(update(CallbackAttempt).where(CallbackAttempt.leg_uuid == plan.leg_uuid).values(
                result="refused", ended_at=now))
            self._release_agent(conn, c.agent_id, c.id, now)
            conn.execute(insert(PolicyRefusal).values(at=now, contact_id=c.id, number=plan.number,
                                                      calling_number=c.original_ani or "", stage="dial", rule=rule,
                                                      reason=reason))
            return self._move(conn, plan.contact_id, [C.ACCEPTED], C.ENDED, f"policy: {reason}",
                              outcome=Outcome.POLICY_REFUSED.value, ended_at=now, attempts=max(c.attempts - 1, 0),
                              last_error=reason)

    def leg_ended(self, uuid: str, cause: str, billsec: int | None, answered: bool) -> None:
        with self.engine.begin() as conn:
            values = dict(ended_at=utcnow(), hangup_cause=cause, billsec=billsec)
            conn.execute(update(Leg).where(Leg.uuid == uuid, Leg.ended_at.is_(None)).values(**values))
