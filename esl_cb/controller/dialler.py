"""Step 3 of a callback's life: the agent accepted; after CallDelaySec the customer is dialled and,
when they answer, bridged to the agent. Not reached (busy, no answer, rejected): the agent is released
and the callback retried later, up to --max-attempts.

The due time is stored when the agent accepts (so a restart resumes it) and the attempt is prepared
then too, with its origination uuid: at the due time the originate goes out with no database work in
the way, and after a crash the stored uuid tells whether it went (never twice).
"""
from __future__ import annotations

import logging
import uuid as uuidlib
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable, Iterator

import gevent
from gevent.event import Event as GEvent
from sqlalchemy.exc import SQLAlchemyError

from esl_cb.config import Settings
from esl_cb.db.store import DialPlan, Store
from esl_cb.domain.states import ContactState as C
from esl_cb.domain.states import Outcome
from esl_cb.esl import commands
from esl_cb.esl.inbound import ESLError, Event

from .guard import CallbackGuard
from .legs import LegRegistry, LegWatch, billsec, job_failed, synthetic
from .pacing import OriginatePacer
from .ports import HOLD_TONE
from .switch import NO_CHANNEL_CAUSES, SwitchHealth, SwitchLink

log = logging.getLogger(__name__)


def digit_sounds(number: str) -> list[str]:
    """A number as the stock digit files, one by one (+1 312... -> digits/1.wav, digits/3.wav, ...)."""
    return [f"digits/{d}.wav" for d in number if d.isdigit()]


RESULT_OF_CAUSE = {"USER_BUSY": "busy", "NO_ANSWER": "no_answer", "NO_USER_RESPONSE": "no_answer",
                   "CALL_REJECTED": "rejected", "ORIGINATOR_CANCEL": "cancelled"}


class Dialler:
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
        self.ports_in_use = 0
        self._port_freed = GEvent()
        self.metrics = None
        self.guard: CallbackGuard | None = None    # the destination policy, asked again before every dial
        self.confirming: dict[str, gevent.Greenlet] = {}   # customer leg -> its confirmation timeout
        # Contacts being connected (from storing 'connected' to the bridge's verdict) -> set when done:
        # an agent's hangup meanwhile waits for it (then 'connected' says whether they talked).
        self.bridging: dict[int, GEvent] = {}
        legs.handlers["callback"] = self.callback_event

    def stop(self) -> None:
        for timer in list(self.timers.values()) + list(self.confirming.values()):
            timer.kill(block=False)

    # -- the agent accepted (from the dispatcher) -------------------------------
    def accept(self, watch: LegWatch, contact, answered_at: datetime | None) -> None:
        """The agent answered a callback offer: store the due time and the coming attempt, then wait."""
        offer = watch.offer
        if contact.call_delay_sec >= 60:
            # SPEC 2 rule 4: the documented behaviour of the original.
            log.error("contact %s (script %s): CallDelaySec %s is 60 or more; agent %s Refused, contact keeps "
                      "its place", contact.id, contact.script, contact.call_delay_sec, offer.agent_name)
            self.store.refuse_accepted(offer, f"CallDelaySec {contact.call_delay_sec} >= 60")
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
            if self.store.agent_left_before_dial(cid, f"agent hung up during CallDelaySec ({cause})"):
                self.wake()
        elif state == C.DIALLING.value:
            # A switch shutting down hangs up the agent too: that attempt was interrupted, not abandoned.
            result = "interrupted" if cause == "SYSTEM_SHUTDOWN" or self.switch.stopping else "agent_hangup"
            self.switch.kill(contact.callback_leg_uuid, "ORIGINATOR_CANCEL")
            self.store.dial_failed(cid, contact.callback_leg_uuid, result, 0, self.settings.max_attempts, counts=False)
            self.wake()

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
        while self.ports_in_use >= self.settings.ports:
            log.info("contact %s: all %d ports busy; the callback waits for one", contact_id, self.settings.ports)
            self._port_freed.clear()
            self._port_freed.wait(timeout=1.0)
        leg = plan.leg_uuid
        watch = self.take_port(LegWatch(leg, "callback", contact_id, plan=plan))
        job = str(uuidlib.uuid4())
        try:
            dial = commands.dial_for(self.settings.dial_template, plan.number)
            cmd = commands.originate(leg, dial, {
                "origination_caller_id_number": plan.caller_id, "origination_caller_id_name": plan.caller_id,
                "esl_cb_contact_id": contact_id, "esl_cb_role": "callback", "esl_cb_attempt": plan.attempt_no,
                "originate_timeout": self.settings.callback_ring_timeout, "ignore_early_media": "true"})
            self.legs.expect_job(job, leg)
            self.pacer.wait(urgent=True)          # due now: never behind offers to agents
            self._observe_lateness(contact_id)
            self.switch.bgapi(cmd, job)
            self.health.sent()
        except (ESLError, commands.UnsafeDialString) as e:
            log.error("contact %s: dial failed before reaching the switch: %s", contact_id, e)
            self.legs.drop_job(job)
            self.release_port(watch)
            self.legs.forget(leg)
            self.store.dial_failed(contact_id, leg, "switch_error", self.settings.retry_interval,
                                   self.settings.max_attempts)
            self.switch.kill(plan.agent_leg_uuid)
            self.wake()
            return
        log.info("contact %s attempt %d: dialling %s as %s on leg %s", contact_id, plan.attempt_no, plan.number,
                 plan.caller_id, leg)
        self._record_dialling(plan)

    def _record_dialling(self, plan: DialPlan) -> None:
        """The originate has gone: store 'dialling', retrying on its own if the database is away. A
        retry of the whole dial would send the originate again (a customer rung twice)."""
        backoff = 0.2
        while True:
            try:
                self.store.mark_dialling(plan)
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
    def take_port(self, watch: LegWatch) -> LegWatch:
        """Watch a callback leg that uses a voice port (counted until its hangup completes)."""
        self.ports_in_use += 1
        watch.holds_port = True
        return self.legs.watch(watch)

    def release_port(self, watch: LegWatch) -> None:
        if not watch.holds_port:
            return
        watch.holds_port = False
        self.ports_in_use -= 1
        self._port_freed.set()

    # -- the customer's leg ------------------------------------------------------
    def callback_event(self, watch: LegWatch, ev: Event) -> bool:
        plan = watch.plan
        name = ev.name
        if name == "BACKGROUND_JOB":
            cause = job_failed(watch, ev)
            if not self.switch.switch_side(cause):
                self.health.accepted()
            if cause is not None:
                self._not_reached(watch, cause)
                if cause in NO_CHANNEL_CAUSES:
                    self.release_port(watch)
                    return True
            return watch.hangup_done
        if name == "CHANNEL_ANSWER":
            if watch.answered:          # a resync after a reconnect may repeat the answer
                return False
            watch.answered = True
            self._customer_answered(watch)
            return False
        if name == "RESUME_BRIDGE":       # recovery: stored as connected, never bridged (a crash between)
            with self._connecting(plan.contact_id):
                self._bridge(watch, None)
            return False
        if name in ("DTMF", "CONFIRM_TIMEOUT"):
            self._confirmation(watch, ev)
            return False
        if name == "CHANNEL_HANGUP":
            if watch.uuid in self.confirming:
                self._confirmation(watch, ev)
            elif watch.answered:
                self.conversation_ended(plan.contact_id, f"customer hung up ({ev.get('Hangup-Cause')})")
            return False
        if name == "CHANNEL_HANGUP_COMPLETE":
            self.store.leg_ended(watch.uuid, ev.get("Hangup-Cause"), billsec(ev), watch.answered)
            self.release_port(watch)
            watch.hangup_done = True
            return watch.job_done
        return False

    def _customer_answered(self, watch: LegWatch) -> None:
        """Stored as connected first, then bridged to the agent who has been waiting on the line. With
        a ConfirmPrompt the customer must first press the key (a voicemail box or a wrong person will
        not): meanwhile the agent hears a tone."""
        plan = watch.plan
        if plan.confirm_prompt:
            log.info("contact %s: customer answered; asking for key %s", plan.contact_id, plan.confirm_key)
            self._play(plan.agent_leg_uuid, [HOLD_TONE], plan.contact_id)
            self._play(watch.uuid, [plan.confirm_prompt], plan.contact_id)
            self.confirming[watch.uuid] = gevent.spawn_later(
                self.settings.confirm_timeout, self.legs.deliver, watch, synthetic("CONFIRM_TIMEOUT", watch.uuid))
            return
        self._connect(watch, None)

    def _confirmation(self, watch: LegWatch, ev: Event) -> None:
        """A key, the timeout or a hangup while the customer is asked to confirm."""
        if watch.uuid not in self.confirming:
            return
        plan = watch.plan
        if ev.name == "DTMF":
            if ev.get("DTMF-Digit") != plan.confirm_key:
                return
            self.confirming.pop(watch.uuid).kill(block=False)
            log.info("contact %s: the customer pressed %s", plan.contact_id, plan.confirm_key)
            self._connect(watch, True)
            return
        self.confirming.pop(watch.uuid).kill(block=False)
        why = "no key" if ev.name == "CONFIRM_TIMEOUT" else "hung up before the key"
        log.info("contact %s attempt %d: not confirmed (%s); counted as not answered", plan.contact_id,
                 plan.attempt_no, why)
        watch.answered = False                 # its hangup is not the end of a conversation
        self._count("not_confirmed")
        outcome = self.store.dial_failed(plan.contact_id, watch.uuid, "not_confirmed", self.settings.retry_interval,
                                         self.settings.max_attempts, confirmed=False)
        if outcome is Outcome.CALLBACK_FAILED:
            log.info("contact %s: callback failed after %d attempts", plan.contact_id, self.settings.max_attempts)
        self.switch.kill(watch.uuid)
        self.switch.kill(plan.agent_leg_uuid)
        self.wake()

    def _play(self, uuid: str, sounds: list[str], contact_id: int) -> None:
        try:
            reply = self.switch.api(commands.broadcast(uuid, sounds))
            if not reply.startswith("+OK"):
                log.warning("contact %s: could not play %s on %s: %s", contact_id, sounds, uuid, reply.strip())
        except (ESLError, commands.UnsafeDialString) as e:
            log.warning("contact %s: could not play %s on %s: %s", contact_id, sounds, uuid, e)

    def wait_for_bridge(self, contact_id: int, timeout: float = 10.0) -> None:
        """From the agent's leg, before it acts on a hangup: while this contact is being connected
        ('connected' stored, uuid_bridge not yet answered and judged) 'connected' does not yet say
        whether anyone talked; wait for the dialler's verdict, then act on what is stored."""
        settled = self.bridging.get(contact_id)
        if settled is not None:
            settled.wait(timeout)

    @contextmanager
    def _connecting(self, contact_id: int) -> Iterator[None]:
        """Marks the window from before 'connected' is stored to the bridge's verdict."""
        settled = self.bridging[contact_id] = GEvent()
        try:
            yield
        finally:
            if self.bridging.get(contact_id) is settled:
                del self.bridging[contact_id]
            settled.set()

    def _connect(self, watch: LegWatch, confirmed: bool | None) -> None:
        """Store 'connected', then bridge."""
        with self._connecting(watch.plan.contact_id):
            if not self.store.dial_answered(watch.plan.contact_id, watch.uuid, confirmed):
                self.switch.kill(watch.uuid)
                return
            self._bridge(watch, confirmed)

    def _bridge(self, watch: LegWatch, confirmed: bool | None) -> None:
        plan = watch.plan
        reply = self.switch.bridge(plan.agent_leg_uuid, watch.uuid)
        if reply.startswith("+OK"):
            log.info("contact %s: customer answered and is connected to the agent", plan.contact_id)
            self._count("answered")
            return
        # uuid_bridge says "-ERR Invalid uuid" for either leg: ask which one is gone.
        if not self.switch.leg_exists(plan.agent_leg_uuid):
            log.warning("contact %s: the agent left before the customer answered (%s); back to the queue",
                        plan.contact_id, reply.strip())
            watch.answered = False            # its hangup is not the end of a conversation
            self.store.bridge_failed(plan.contact_id, watch.uuid, "agent gone before the bridge")
            self.switch.kill(watch.uuid)
            self.wake()
            return
        # The customer hung up as they answered, before they could hear the agent: counted as not
        # reached and retried; the agent, who waited on the line, is released.
        result = "bridge_failed" if self.switch.leg_exists(watch.uuid) else "hung_up_at_answer"
        log.warning("contact %s attempt %d: %s before the bridge (%s)", plan.contact_id, plan.attempt_no,
                    "the bridge failed" if result == "bridge_failed" else "the customer hung up as they answered",
                    reply.strip())
        watch.answered = False                # its hangup is not the end of a conversation
        self._count(result)
        outcome = self.store.dial_failed(plan.contact_id, watch.uuid, result, self.settings.retry_interval,
                                         self.settings.max_attempts, confirmed=confirmed, answered=True)
        if outcome is Outcome.CALLBACK_FAILED:
            log.info("contact %s: callback failed after %d attempts", plan.contact_id, self.settings.max_attempts)
        self.switch.kill(watch.uuid)
        self.switch.kill(plan.agent_leg_uuid)
        self.wake()

    def _not_reached(self, watch: LegWatch, cause: str) -> None:
        plan = watch.plan
        if self.switch.switch_side(cause):
            # Not the customer's doing (the switch is full or shutting down): not counted, tried again
            # when it has room.
            result = "interrupted" if cause == "SYSTEM_SHUTDOWN" or self.switch.stopping else "switch_busy"
            self._count(result)
            pause, _ = self.health.refused(cause)
            self.store.dial_failed(plan.contact_id, watch.uuid, result, max(pause, 1.0), self.settings.max_attempts,
                                   counts=False)
            log.info("contact %s attempt %d: %s (%s); not counted, will retry", plan.contact_id, plan.attempt_no,
                     result, cause)
        else:
            result = RESULT_OF_CAUSE.get(cause, "failed")
            self._count(result)
            outcome = self.store.dial_failed(plan.contact_id, watch.uuid, result, self.settings.retry_interval,
                                             self.settings.max_attempts)
            log.info("contact %s attempt %d: %s (%s)%s", plan.contact_id, plan.attempt_no, result, cause,
                     "; callback failed" if outcome is Outcome.CALLBACK_FAILED else "; will retry")
        self.switch.kill(plan.agent_leg_uuid)       # the agent waited on the line: release them
        self.wake()

