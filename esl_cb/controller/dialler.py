"""Step 3 of a callback's life: the agent accepted; after CallDelaySec the customer is dialled (their
leg, answered or not: customer.py). Not reached (busy, no answer, rejected): the agent is released
and the callback retried later, up to --max-attempts.

The due time is stored when the agent accepts (so a restart resumes it) and the attempt is prepared
then too, with its origination uuid: at the due time the originate goes out with no database work in
the way, and after a crash the stored uuid tells whether it went (never twice).
"""
from __future__ import annotations

import logging
import uuid as uuidlib
from datetime import datetime, timezone
from typing import Callable

import gevent
from gevent.event import Event as GEvent
from sqlalchemy.exc import SQLAlchemyError

from esl_cb.config import Settings
from esl_cb.db.store import DialPlan, Store
from esl_cb.domain.states import ContactState as C
from esl_cb.esl import commands
from esl_cb.esl.inbound import ESLError, NotSent

from .guard import CallbackGuard
from .customer import CustomerLeg
from .legs import LegRegistry, LegWatch
from .pacing import OriginatePacer
from .switch import SwitchHealth, SwitchLink

log = logging.getLogger(__name__)


def digit_sounds(number: str) -> list[str]:
    """A number as the stock digit files, one by one (+1 312... -> digits/1.wav, digits/3.wav, ...)."""
    return [f"digits/{d}.wav" for d in number if d.isdigit()]


# A dial the switch never received (not connected): tried again this soon, not counted.
SWITCH_ERROR_RETRY = 2.0
# uuid_kill of a leg whose originate just left, before the switch created it: tried again after these.
KILL_RETRIES = (0.1, 0.3, 1.0, 2.0)


class Dialler(CustomerLeg):
    def __init__(self, settings: Settings, store: Store, switch: SwitchLink, legs: LegRegistry,
                 pacer: OriginatePacer, health: SwitchHealth, wake: Callable[[], None]) -> None:
        self.settings = settings
        self.store = store
        self.switch = switch
        self.legs = legs
        self.pacer = pacer
        self.health = health
        self.wake = wake
        # The customer hung up a conversation (the dispatcher completes it and offers the agent's next).
        self.conversation_ended: Callable[[int, str], bool] = lambda contact_id, reason: False
        self.timers: dict[int, gevent.Greenlet] = {}     # contact id -> its CallDelaySec timer
        self.due: dict[int, datetime] = {}              # ... and that timer's due time
        self.plans: dict[int, DialPlan] = {}            # contact id -> the prepared dial, sent when due
        # Due dials between taking their plan and sending the originate (they wait for a voice port,
        # the pacer, our membership): an agent who leaves meanwhile cancels theirs (`cancelled`), and
        # each wait is followed by a look at it.
        self.sending: dict[str, DialPlan] = {}         # leg uuid -> its dial (one per attempt)
        self.cancelled: set[str] = set()
        self.voice_ports_in_use = 0
        self.voice_port_limit = settings.ports        # this controller's share of its switch's (fleet.py)
        self._port_freed = GEvent()
        self.metrics = None
        self.guard: CallbackGuard | None = None    # the destination policy, asked again before every dial
        # Whether this controller still owns its contacts (controller/membership.py); None: always.
        self.may_act: Callable[[], bool] | None = None
        self.confirming: dict[str, gevent.Greenlet] = {}   # customer leg -> its confirmation timeout
        legs.handlers["callback"] = self.callback_event

    def stop(self) -> None:
        for timer in list(self.timers.values()) + list(self.confirming.values()):
            timer.kill(block=False)

    def drop_all(self) -> None:
        """Forget every due dial without touching the switch or the store (another controller took
        over our contacts: they are its now)."""
        self.stop()
        self.cancelled.update(self.sending)
        self.timers.clear()
        self.due.clear()
        self.plans.clear()
        self.confirming.clear()
        self.voice_ports_in_use = 0
        self._port_freed.set()


    # -- the agent accepted (from the dispatcher) -------------------------------
    def accept(self, watch: LegWatch, contact, answered_at: datetime | None) -> None:
        """The agent answered a callback offer: store the due time and the coming attempt, then wait."""
        offer = watch.offer
        if contact.call_delay_sec >= 60:
            # SPEC 2 rule 4: the documented behaviour of the original.
            log.error("contact %s (script %s): CallDelaySec %s is 60 or more; agent %s Refused, contact keeps "
                      "its place and is not offered again for %gs (mend the script, or cancel the callback)",
                      contact.id, contact.script, contact.call_delay_sec, offer.agent_name, self.settings.retry_interval)
            self.store.refuse_accepted(offer, f"CallDelaySec {contact.call_delay_sec} >= 60",
                                       self.settings.retry_interval)
            watch.answered = False
            self.switch.kill(watch.uuid)
            self.wake()
            return
        accepted = self.store.accept_and_prepare(offer, contact.call_delay_sec, answered_at, str(uuidlib.uuid4()))
        if accepted is None:
            self.switch.kill(watch.uuid)
            return
        due, plan = accepted
        if plan is None:
            return
        self.plans[contact.id] = plan
        log.info("contact %s accepted by agent %s; dialling %s at %s on leg %s", contact.id, offer.agent_name,
                 contact.callback_number, due.isoformat(), plan.leg_uuid)
        self.schedule(contact.id, due)
        if plan.whisper_prompt:
            # Who comes next, during CallDelaySec: the prompt, then the number digit by digit.
            self._play(plan.agent_leg_uuid, [plan.whisper_prompt] + digit_sounds(plan.number), plan.contact_id)

    def schedule(self, contact_id: int, due: datetime, plan: DialPlan | None = None) -> None:
        """Dial at `due` (a stored time: after a restart the timer resumes from it)."""
        if plan is not None:
            self.plans[contact_id] = plan
        delay = max((due - datetime.now(timezone.utc)).total_seconds(), 0.0)
        old = self.timers.pop(contact_id, None)
        if old is not None:
            old.kill(block=False)
        self.timers[contact_id] = gevent.spawn_later(delay, self._dial, contact_id)
        self.due[contact_id] = due

    def agent_left(self, contact, cause: str) -> None:
        """The agent hung up before the customer was connected: nothing more is dialled, the contact
        keeps its place (a ringing customer is cancelled, not counted)."""
        cid = contact.id
        state = contact.state
        if state == C.ACCEPTED.value and contact.callback_leg_uuid in self.legs:
            # The originate already went out; 'dialling' is being recorded: treat it as dialling.
            state = C.DIALLING.value
        if state == C.ACCEPTED.value:
            timer = self.timers.pop(cid, None)
            if timer is not None:
                timer.kill(block=False)
            self.due.pop(cid, None)
            self.plans.pop(cid, None)
            # A dial waiting for a port or the pacer never goes.
            self.cancelled.update(leg for leg, plan in self.sending.items() if plan.contact_id == cid)
            if self.store.agent_left_before_dial(cid, f"agent hung up during CallDelaySec ({cause})"):
                self.wake()
        elif state == C.DIALLING.value:
            # A switch shutting down hangs up the agent too: that attempt was interrupted, not abandoned.
            result = "interrupted" if cause == "SYSTEM_SHUTDOWN" or self.switch.stopping else "agent_hangup"
            self.hang_up_placed_leg(contact.callback_leg_uuid, "ORIGINATOR_CANCEL")
            self.store.dial_failed(cid, contact.callback_leg_uuid, result, 0, self.settings.max_attempts, counts=False)
            self.wake()

    def hang_up_placed_leg(self, uuid: str | None, cause: str = "NORMAL_CLEARING") -> None:
        """Hang up a customer leg we originated. Right after `bgapi originate` the switch may not have
        created the channel yet (uuid_kill: no such channel): while we still watch the leg and its
        hangup has not come, try again a few times, so a cancelled dial never rings on."""
        if not uuid or self.switch.kill(uuid, cause):
            return

        def again() -> None:
            for pause in KILL_RETRIES:
                gevent.sleep(pause)
                watch = self.legs.get(uuid)
                if watch is None or watch.hangup_done or self.switch.kill(uuid, cause):
                    return
        gevent.spawn(again)

    # -- the due time ----------------------------------------------------------
    def _dial(self, contact_id: int) -> None:
        try:
            self._dial_now(contact_id)
        except SQLAlchemyError as e:
            # A due dial is never dropped: try again shortly (the persisted state decides).
            log.error("contact %s: database unavailable when the dial was due (%s); retrying in 1s", contact_id,
                      type(e).__name__)
            self.timers[contact_id] = gevent.spawn_later(1.0, self._dial, contact_id)

    def _dial_now(self, contact_id: int) -> None:
        """Send the originate first (the attempt was stored at acceptance), then record."""
        self.timers.pop(contact_id, None)
        plan = self.plans.pop(contact_id, None) or self.store.prepared_plan(contact_id)
        if plan is None:
            return
        if self.guard is not None:
            verdict = self.guard.dial_verdict(plan)
            if not verdict.allowed:       # the policy changed since the callback was requested
                self.guard.refused_dial(plan, verdict)
                self.store.refuse_dial(plan, verdict.rule, verdict.reason)
                self.switch.kill(plan.agent_leg_uuid)
                self.wake()
                return
        # In `sending` until 'dialling' is stored: a clean stop waits for it (it stopped between the
        # originate and its record, and the restart found the contact 'accepted' with a leg ringing).
        self.sending[plan.leg_uuid] = plan
        try:
            if self._send_when_clear(plan):
                log.info("contact %s attempt %d: dialling %s as %s on leg %s", contact_id, plan.attempt_no,
                         plan.number, plan.caller_id, plan.leg_uuid)
                self._record_dialling(plan)
        finally:
            self.sending.pop(plan.leg_uuid, None)
            self.cancelled.discard(plan.leg_uuid)

    def _still_wanted(self, plan: DialPlan) -> bool:
        """After a wait: the agent may have left (agent_left cancels) or another controller may own the
        contact now (our membership lapsed while we waited)."""
        if self.may_act is not None and not self.may_act():     # (may wait for one heartbeat)
            log.warning("contact %s: this controller may no longer own it (membership lapsed); not dialled",
                        plan.contact_id)
            return False
        if plan.leg_uuid in self.cancelled:      # looked at last: the membership check may have waited
            log.info("contact %s: cancelled while the dial waited (the agent left, or another controller took "
                     "it over); not dialled", plan.contact_id)
            return False
        return True

    def _send_when_clear(self, plan: DialPlan) -> bool:
        """Wait for a voice port and the pacer, looking again after each wait; then the originate goes,
        with nothing that yields between the last look and the write. True if it was sent (or may have
        been: an ambiguous ESL failure is recorded as sent, and recovery asks the switch)."""
        contact_id, leg = plan.contact_id, plan.leg_uuid
        while self.voice_ports_in_use >= self.voice_port_limit:
            log.info("contact %s: all %d ports busy; the callback waits for one", contact_id, self.voice_port_limit)
            self._port_freed.clear()
            self._port_freed.wait(timeout=1.0)
            if not self._still_wanted(plan):
                return False
        self.voice_ports_in_use += 1           # reserved across the pacer's wait: two dials never share one
        watch = LegWatch(leg, "callback", contact_id, plan=plan, holds_port=True)
        job = str(uuidlib.uuid4())
        try:
            dial = commands.dial_for(self.settings.dial_template, plan.number)
            cmd = commands.originate(leg, dial, {
                "origination_caller_id_number": plan.caller_id, "origination_caller_id_name": plan.caller_id,
                "esl_cb_contact_id": contact_id, "esl_cb_role": "callback", "esl_cb_attempt": plan.attempt_no,
                "originate_timeout": self.settings.callback_ring_timeout, "ignore_early_media": "true"})
            self.pacer.wait(urgent=True)          # due now: never behind offers to agents
            if not self._still_wanted(plan):
                self.release_voice_port(watch)
                return False
            self.legs.watch(watch)
            self.legs.expect_job(job, leg)
            self._observe_lateness(contact_id)
            self.switch.bgapi(cmd, job)
            self.health.sent()
        except (NotSent, commands.UnsafeDialString) as e:
            # Certainly never reached the switch: not the customer's doing, not counted, tried again soon.
            log.error("contact %s: dial failed before reaching the switch: %s", contact_id, e)
            self.legs.drop_job(job)
            self.release_voice_port(watch)
            self.legs.forget(leg)
            self.store.dial_failed(contact_id, leg, "switch_error", SWITCH_ERROR_RETRY, self.settings.max_attempts,
                                   counts=False)
            agent = self.legs.get(plan.agent_leg_uuid)
            if agent is not None:
                # No longer this contact's agent leg (it may be hung up only once the switch answers
                # again, when the contact has moved on): its hangup ends its billing leg, nothing else.
                agent.answered = False
            self.switch.kill(plan.agent_leg_uuid)
            self.wake()
            return False
        except ESLError as e:
            # Written, or partly, and then the connection failed or timed out: the switch may be
            # ringing the customer. Recorded as dialling; the reconnection's recovery asks the switch
            # about the leg (never dialled twice).
            log.error("contact %s: the originate may or may not have reached the switch (%s); recorded as "
                      "dialling, recovery will ask the switch", contact_id, e)
            self._count("switch_unknown")
        return True

    def _record_dialling(self, plan: DialPlan) -> None:
        """The originate has gone: store 'dialling', retrying on its own if the database is away. A
        retry of the whole dial would send the originate again (a customer rung twice)."""
        backoff = 0.2
        while True:
            try:
                if not self.store.mark_dialling(plan):
                    # The contact moved on while the originate went out (the agent left at that very
                    # moment, or another controller owns it now): the customer must not ring on.
                    log.warning("contact %s: dialled, but it is no longer 'accepted' here; hanging up leg %s",
                                plan.contact_id, plan.leg_uuid)
                    self.hang_up_placed_leg(plan.leg_uuid)
                return
            except SQLAlchemyError as e:
                log.error("contact %s: dialled, but 'dialling' could not be stored (%s); retrying in %.1fs, not "
                          "dialling again", plan.contact_id, type(e).__name__, backoff)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _observe_lateness(self, contact_id: int) -> None:
        due = self.due.pop(contact_id, None)
        if due is not None and self.metrics is not None:
            self.metrics.dial_late.observe(max((datetime.now(timezone.utc) - due).total_seconds(), 0.0))

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.dials.labels(result).inc()

    # -- voice ports (SPEC 2 rule 9) ---------------------------------------------
    def watch_with_voice_port(self, watch: LegWatch) -> LegWatch:
        """Watch a callback leg that uses a voice port (counted until its hangup completes)."""
        self.voice_ports_in_use += 1
        watch.holds_port = True
        return self.legs.watch(watch)

    def release_voice_port(self, watch: LegWatch) -> None:
        if not watch.holds_port:
            return
        watch.holds_port = False
        self.voice_ports_in_use = max(self.voice_ports_in_use - 1, 0)
        self._port_freed.set()
