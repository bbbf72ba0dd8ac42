"""Step 4 of a callback's life: the customer's leg. Answered: stored as connected, then bridged to the
agent waiting on the line (with a ConfirmPrompt, after the customer's key). Not reached (busy, no
answer, rejected, a full switch): the agent is released and the callback retried or given up.

A mixin of the Dialler (dialler.py), which places the leg and owns its state.
"""
from __future__ import annotations

import logging

import gevent
from sqlalchemy.exc import SQLAlchemyError

from esl_cb.domain.states import Outcome
from esl_cb.esl import commands
from esl_cb.esl.inbound import ESLError, Event

from .legs import LegWatch, billsec, job_failed, synthetic
from .ports import HOLD_TONE
from .switch import NO_CHANNEL_CAUSES

log = logging.getLogger(__name__)

RESULT_OF_CAUSE = {"USER_BUSY": "busy", "NO_ANSWER": "no_answer", "NO_USER_RESPONSE": "no_answer",
                   "CALL_REJECTED": "rejected", "ORIGINATOR_CANCEL": "cancelled"}


class CustomerLeg:
    """What the customer's leg does (the Dialler's attributes: settings, store, switch, legs, health,
    wake, confirming, conversation_ended, metrics)."""

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
                    self.release_voice_port(watch)
                    return True
            return watch.hangup_done
        if name == "CHANNEL_ANSWER":
            if watch.answered:          # a resync after a reconnect may repeat the answer
                return False
            watch.answered = True
            try:
                self._customer_answered(watch)
            except SQLAlchemyError:
                # Not acted on: the lane retries this very event, which must then not look repeated
                # (it did, and an answer met by a database outage was dropped: issue 17).
                watch.answered = False
                raise
            return False
        if name == "RESUME_BRIDGE":       # stored as connected, bridge not known to have gone
            self._resume_bridge(watch)
            return False
        if name in ("DTMF", "CONFIRM_TIMEOUT"):
            self._confirmation(watch, ev)
            return False
        if name == "CHANNEL_HANGUP":
            if watch.uuid in self.confirming:
                self._confirmation(watch, ev)
            elif watch.answered:
                if self.conversation_ended(plan.contact_id, f"customer hung up ({ev.get('Hangup-Cause')})"):
                    self.switch.kill(plan.agent_leg_uuid)      # not left parked if the bridge never took
            return False
        if name == "CHANNEL_HANGUP_COMPLETE":
            self.store.leg_ended(watch.uuid, ev.get("Hangup-Cause"), billsec(ev), watch.answered)
            self.release_voice_port(watch)
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

    def resume_bridge_later(self, watch: LegWatch) -> None:
        """Once the switch answers again, ask it whether the pair is bridged (in the contact's lane)."""
        def when_ready() -> None:
            self.switch.ready.wait()
            if self.legs.get(watch.uuid) is watch:
                self.legs.deliver(watch, synthetic("RESUME_BRIDGE", watch.uuid))
        gevent.spawn_later(0.5, when_ready)

    def _play(self, uuid: str, sounds: list[str], contact_id: int) -> None:
        try:
            reply = self.switch.api(commands.broadcast(uuid, sounds))
            if not reply.startswith("+OK"):
                log.warning("contact %s: could not play %s on %s: %s", contact_id, sounds, uuid, reply.strip())
        except (ESLError, commands.UnsafeDialString) as e:
            log.warning("contact %s: could not play %s on %s: %s", contact_id, sounds, uuid, e)

    def _connect(self, watch: LegWatch, confirmed: bool | None) -> None:
        """Store 'connected', then bridge. (The agent's hangup meanwhile waits in the contact's lane,
        legs.py: when it is handled, 'connected' says whether they talked.)"""
        if not self.store.dial_answered(watch.plan.contact_id, watch.uuid, confirmed):
            self.switch.kill(watch.uuid)
            return
        self._bridge(watch, confirmed)

    def _resume_bridge(self, watch: LegWatch) -> None:
        """Stored as connected, bridge not known to have gone (a crash, or the switch did not answer
        uuid_bridge): bridge now unless the legs are bridged already."""
        plan = watch.plan
        leg = self.switch.leg_state(watch.uuid)
        if leg is not None and leg.bridged_to == plan.agent_leg_uuid:
            log.info("contact %s: the customer and the agent are bridged", plan.contact_id)
            return
        self._bridge(watch, None)

    def _bridge(self, watch: LegWatch, confirmed: bool | None) -> None:
        plan = watch.plan
        try:
            reply = self.switch.bridge(plan.agent_leg_uuid, watch.uuid)
        except ESLError as e:
            # 'connected' is stored and the bridge's fate unknown: look again as soon as the switch
            # answers (never left as a pair that would later count as a completed callback).
            log.error("contact %s: no answer to uuid_bridge (%s); the bridge is checked again when the switch "
                      "answers", plan.contact_id, e)
            self._count("bridge_unknown")
            self.resume_bridge_later(watch)
            return
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

