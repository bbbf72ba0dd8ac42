"""Step 2 of a callback's life (and of a live caller's): a waiting contact meets a free agent.

The database claims the pair in one statement (best contact by SPEC 3's order, longest-idle agent
with its skill) and we ring the agent's phone. The agent's answer bridges a live caller at once, or
hands a callback to the dialler (step 3). A conversation's end frees the agent, and its next offer
is claimed in the same transaction and rung here, with no wake-up hop.

Offers are paced under the switch's sessions-per-second, and when the switch refuses calls (it is
full) the dispatcher backs off instead of offering the same pair again in a loop.
"""
from __future__ import annotations

import logging
import time
import uuid as uuidlib
from datetime import datetime, timedelta, timezone
from typing import Callable

import gevent
from gevent.event import Event as GEvent
from sqlalchemy.exc import SQLAlchemyError

from esl_cb.config import Settings
from esl_cb.db.store import Offer, Store, as_utc
from esl_cb.domain.runtime import ConnectedToAgent
from esl_cb.domain.states import ContactState as C
from esl_cb.esl import commands
from esl_cb.esl.inbound import ESLError, Event

from .callers import CallerSessions
from .dialler import Dialler
from .legs import LegRegistry, LegWatch, answered_at, billsec, job_failed
from .pacing import OriginatePacer
from .switch import NO_CHANNEL_CAUSES, SwitchHealth, SwitchLink

log = logging.getLogger(__name__)
LOST_OFFER_GRACE = 5.0     # seconds past the agent ring timeout before an unwatched offer counts as lost


class Dispatcher:
    def __init__(self, settings: Settings, store: Store, switch: SwitchLink, legs: LegRegistry,
                 pacer: OriginatePacer, health: SwitchHealth, callers: CallerSessions, dialler: Dialler) -> None:
        self.settings = settings
        self.store = store
        self.switch = switch
        self.legs = legs
        self.pacer = pacer
        self.health = health
        self.callers = callers
        self.dialler = dialler
        self._wake = GEvent()
        self._running = False
        legs.handlers["agent"] = self.agent_event
        callers.conversation_ended = dialler.conversation_ended = self.conversation_ended
        health.wake = self.wake

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        """Offer whenever woken (a contact queued, an agent freed, a NOTIFY), and poll as the backstop."""
        self._running = True
        next_sweep = time.monotonic()
        while self._running:
            pause = self.health.remaining()
            if pause > 0:          # the switch is refusing sessions: wake-ups wait too
                gevent.sleep(min(pause, self.settings.poll_interval))
            else:
                self._wake.wait(timeout=self.settings.poll_interval)
            self._wake.clear()
            if not self.switch.ready.is_set():
                continue
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + max(5 * self.settings.poll_interval, 1.0)
                    self._sweep_lost_offers()
                if self.settings.refused_reset > 0:
                    self.store.reset_refused(self.settings.refused_reset)
                if not self.health.paused():
                    self._offer_waiting()
            except SQLAlchemyError as e:
                log.error("dispatcher: database unavailable (%s); retrying", type(e).__name__)
                gevent.sleep(min(self.settings.poll_interval, 1.0))

    def _offer_waiting(self) -> None:
        """Match waiting contacts with free agents until one side runs out."""
        while self._running and self.switch.ready.is_set() and not self.health.paused():
            with self.legs.critical.running_now():          # arriving callers wait meanwhile
                offer = self.store.claim_offer(str(uuidlib.uuid4()))
                if offer is None:
                    return
                if not self.start_offer(offer):
                    return            # the switch is unreachable: wait for the next wake-up or poll

    def conversation_ended(self, contact_id: int, reason: str) -> bool:
        """A conversation ended. The freed agent's next offer is claimed in the same transaction and
        rung at once, here: no wake-up hop, no wrap-up penalty. True if this call completed it."""
        claim = str(uuidlib.uuid4()) if self.switch.ready.is_set() and not self.health.paused() else None
        with self.legs.critical.running_now():
            completed, offer = self.store.complete(contact_id, reason, claim_leg_uuid=claim)
            if offer is not None:
                self.start_offer(offer)
        return completed

    def start_offer(self, offer: Offer) -> bool:
        """Ring the agent's phone, showing the contact's number (and 'Callback' for a callback)."""
        self.legs.watch(LegWatch(offer.agent_leg_uuid, "agent", offer.contact_id, offer=offer))
        number = offer.contact_number or "0"
        label = f"Callback {number}" if offer.callback else f"{offer.skill} {number}"
        cmd = commands.originate(offer.agent_leg_uuid, offer.dial_string, {
            "origination_caller_id_number": number, "origination_caller_id_name": label,
            "esl_cb_contact_id": offer.contact_id, "esl_cb_role": "agent",
            "originate_timeout": self.settings.agent_ring_timeout, "ignore_early_media": "true"})
        job = str(uuidlib.uuid4())
        self.legs.expect_job(job, offer.agent_leg_uuid)
        log.info("contact %s offered to agent %s on leg %s", offer.contact_id, offer.agent_name,
                 offer.agent_leg_uuid)
        try:
            self.pacer.wait()
            self.switch.bgapi(cmd, job)
            self.health.sent()
        except ESLError as e:
            self.legs.drop_job(job)
            self.legs.forget(offer.agent_leg_uuid)
            log.error("contact %s: could not ring agent %s: %s", offer.contact_id, offer.agent_name, e)
            self.store.offer_failed(offer, refused=False, reason="switch unreachable")
            return False
        return True

    # -- offers nobody watches ---------------------------------------------------------
    def _sweep_lost_offers(self) -> None:
        """An offer nobody watches will never be rung or released: its originate failed to leave, or
        the database committed the claim but its answer was lost. After the ring time, give it back."""
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=self.settings.agent_ring_timeout + LOST_OFFER_GRACE)
        for c in self.store.contacts_in([C.OFFERED], mine=True):
            offered = as_utc(c.offered_at)
            if c.agent_leg_uuid in self.legs or offered is None or offered > cutoff:
                continue
            log.warning("contact %s: its offer on leg %s was never rung or is no longer watched; it goes back "
                        "to the queue", c.id, c.agent_leg_uuid)
            self.give_back_offer(c, self.switch.leg_exists, "offer lost")

    def give_back_offer(self, c, exists: Callable[[str | None], bool], reason: str) -> None:
        """An unwatched offer: hang up its agent leg if the switch has one; the contact keeps its place
        (a live caller who left ends as abandoned)."""
        if exists(c.agent_leg_uuid):
            self.switch.kill(c.agent_leg_uuid)
        if c.callback_requested or self.callers.live(c.id) is not None:
            self.store.offer_failed(offer_of(c), refused=False, reason=reason)
        else:
            self.store.abandon_offer(c.id, "caller gone while the controller was away")

    # -- the agent's leg ------------------------------------------------------------------
    def agent_event(self, watch: LegWatch, ev: Event) -> bool:
        offer = watch.offer
        name = ev.name
        if name == "BACKGROUND_JOB":
            cause = job_failed(watch, ev)
            if self.switch.switch_side(cause):
                _, agent_pause = self.health.refused(cause, offer.agent_id)
                self.store.offer_failed(offer, refused=False, reason=f"switch refused the call ({cause})",
                                        not_before=agent_pause)
            else:
                self.health.accepted(offer.agent_id)
                if cause is not None:
                    self.store.offer_failed(offer, refused=True, reason=f"agent did not take the call ({cause})")
            if cause is not None:
                self.wake()
                if cause in NO_CHANNEL_CAUSES:
                    return True       # no channel was ever created: no hangup events will follow
            return watch.hangup_done
        if name == "CHANNEL_ANSWER":
            if watch.answered:          # a resync after a reconnect may repeat the answer
                return False
            watch.answered = True
            self._agent_answered(watch, answered_at(ev))
            return False
        if name == "CHANNEL_HANGUP":
            if watch.answered:
                self._agent_hung_up(watch, ev.get("Hangup-Cause"))
            return False
        if name == "CHANNEL_HANGUP_COMPLETE":
            self.store.leg_ended(watch.uuid, ev.get("Hangup-Cause"), billsec(ev), watch.answered)
            watch.hangup_done = True
            return watch.job_done
        return False

    def _agent_answered(self, watch: LegWatch, at: datetime | None) -> None:
        offer = watch.offer
        contact = self.store.contact(offer.contact_id)
        if contact.state != C.OFFERED.value or contact.agent_leg_uuid != offer.agent_leg_uuid:
            log.info("contact %s: agent %s answered but the contact is %s; hanging up the agent",
                     offer.contact_id, offer.agent_name, contact.state)
            self.switch.kill(watch.uuid)
            return
        if contact.callback_requested:
            self.dialler.accept(watch, contact, at)
            return
        # A live caller: stored as connected, then bridged; the caller's script stops.
        live = self.callers.live(offer.contact_id)
        if not self.store.accept_live(offer):
            self.switch.kill(watch.uuid)
            return
        if live is not None:
            live.connected = True
        reply = self.switch.bridge(contact.caller_uuid, watch.uuid)
        if not reply.startswith("+OK"):
            log.error("contact %s: bridging caller %s to agent %s failed: %s", offer.contact_id,
                      contact.caller_uuid, offer.agent_name, reply.strip())
            self.switch.kill(watch.uuid)
            return
        log.info("contact %s connected to agent %s (live)", offer.contact_id, offer.agent_name)
        if live is not None and live.greenlet is not None:
            live.greenlet.kill(ConnectedToAgent(), block=False)

    def _agent_hung_up(self, watch: LegWatch, cause: str) -> None:
        cid = watch.contact_id
        self.dialler.wait_for_bridge(cid)   # 'connected' stored, bridge under way: wait for its verdict
        # The common case first: a conversation ended and the agent is free (with the next offer).
        if self.conversation_ended(cid, f"agent hung up ({cause})"):
            return
        contact = self.store.contact(cid)
        if contact.agent_leg_uuid != watch.uuid and contact.state != C.CONNECTED.value:
            return
        self.dialler.agent_left(contact, cause)


def offer_of(c) -> Offer:
    """The Offer of a stored contact: what an agent leg's handler needs when the offer was not made
    in this process (a restart, a lost offer)."""
    return Offer(c.id, c.agent_id, "", "", c.agent_leg_uuid, bool(c.callback_requested), c.caller_uuid,
                 c.callback_number or c.original_ani or "", "")
