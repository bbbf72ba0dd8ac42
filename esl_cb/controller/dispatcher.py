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
from esl_cb.domain.states import PHONE_UNREACHABLE_CAUSES, PHONE_UNREACHABLE_PAUSE, miss_of
from esl_cb.esl import commands
from esl_cb.esl.inbound import ESLError, Event

from .callers import CallerSessions
from .dialler import Dialler
from .legs import LegRegistry, LegWatch, answered_at, billsec, job_failed, quiet, synthetic
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
        # Whether this controller still owns its contacts (controller/membership.py); None: always.
        self.may_act: Callable[[], bool] | None = None
        self._pacing: set[gevent.Greenlet] = set()      # offers waiting for the pacer in their own greenlet
        self.draining = False           # our switch drains: no new offers (fleet.py), its calls finish
        self.offers_from = 0.0          # monotonic time before which we offer nothing (fleet.py: joining)
        # Where an offer's time goes (metrics.py; issue 18: several controllers woken by one NOTIFY):
        # the wall time a NOTIFY reached our LISTEN session, consumed by the first claim after it.
        self.notified_at: float | None = None
        self.claim_timing: Callable[[bool, float, float | None], None] | None = None    # found, claim s, since NOTIFY
        self.originate_timing: Callable[[float], None] | None = None      # claim done -> originate sent (s)
        legs.handlers["agent"] = self.agent_event
        callers.conversation_ended = dialler.conversation_ended = self.conversation_ended
        health.wake = self.wake

    def wake(self, notified_at: float | None = None) -> None:
        """`notified_at`: the wall time a NOTIFY that asks for this wake-up arrived (for the timings)."""
        if notified_at is not None and self.notified_at is None:
            self.notified_at = notified_at
        self._wake.set()

    def _may_act(self) -> bool:
        return self.may_act is None or self.may_act()

    def _may_offer(self) -> bool:
        return not self.draining and time.monotonic() >= self.offers_from and self._may_act()

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
                # Nothing else to do while the switch is away: look once a poll interval (an offer rung
                # there goes back within one of its ring time + grace, not up to 5 of them later).
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.settings.poll_interval
                    self._offers_on_a_lost_switch()
                continue
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + max(5 * self.settings.poll_interval, 1.0)
                    self._sweep_lost_offers()
                    # Wrap-ups and delays over (the backstop of agent_timers.py: a crash, another controller).
                    self.store.end_holds(refused_reset=self.settings.refused_reset)
                if not self.health.paused():
                    self._offer_waiting()
            except SQLAlchemyError as e:
                log.log(quiet(self.store, logging.ERROR), "dispatcher: database unavailable (%s); retrying",
                        type(e).__name__)
                gevent.sleep(min(self.settings.poll_interval, 1.0))
            except ESLError as e:
                # An ESL timeout in the sweep used to end this greenlet for good (issue 17).
                log.error("dispatcher: FreeSWITCH did not answer (%s); retrying", e)
                gevent.sleep(min(self.settings.poll_interval, 1.0))

    def _offer_waiting(self) -> None:
        """Match waiting contacts with free agents until one side runs out. The pacer is waited for
        before the claim and outside the critical-work gate: a paced burst of offers never holds back
        arriving callers (issue 17), and a claimed agent is rung at once."""
        while self._running and self.switch.ready.is_set() and not self.health.paused():
            if not self._may_offer():
                return
            self.pacer.wait()
            if not self._may_act():
                self.pacer.refund()
                return
            notified, self.notified_at = self.notified_at, None
            started = time.time()
            with self.legs.critical.running_now():          # arriving callers wait meanwhile
                offer = self.store.claim_offer(str(uuidlib.uuid4()))
            claimed = time.time()
            if self.claim_timing is not None:
                self.claim_timing(offer is not None, claimed - started,
                                  None if notified is None else max(started - notified, 0.0))
            if offer is None:
                self.pacer.refund()
                return
            if not self.start_offer(offer, paced=True, claimed_at=claimed):
                return            # the switch is unreachable: wait for the next wake-up or poll

    def conversation_ended(self, contact_id: int, reason: str) -> bool:
        """A conversation ended. The agent goes WrapUp if they have a wrap-up time (a timer ends it:
        agent_timers.py); otherwise their next offer is claimed in the same transaction and rung at
        once, here: no wake-up hop. True if this call completed it."""
        claim = (str(uuidlib.uuid4()) if self._running and self.switch.ready.is_set() and not self.health.paused()
                 and self._may_offer() else None)
        with self.legs.critical.running_now():
            completed, offer = self.store.complete(contact_id, reason, claim_leg_uuid=claim)
            if offer is not None:
                self.start_offer(offer)
        return completed

    def start_offer(self, offer: Offer, paced: bool = False, claimed_at: float | None = None) -> bool:
        """Ring the agent's phone, showing the contact's number (and 'Callback' for a callback).
        `paced`: the caller already took the pacer's token. Otherwise, with no token at hand, the
        offer waits for one in a greenlet of its own: this may run inside the critical-work gate (an
        agent's hangup, with the next offer claimed in the same statement), which is never held across
        a wait."""
        self.legs.watch(LegWatch(offer.agent_leg_uuid, "agent", offer.contact_id, offer=offer))
        number = offer.contact_number or "0"
        label = f"Callback {number}" if offer.callback else f"{offer.skill} {number}"
        cmd = commands.originate(offer.agent_leg_uuid, offer.dial_string, {
            "origination_caller_id_number": number, "origination_caller_id_name": label,
            "esl_cb_contact_id": offer.contact_id, "esl_cb_role": "agent",
            "originate_timeout": self.settings.agent_ring_timeout, "ignore_early_media": "true"})
        if paced or self.pacer.try_take():
            return self._ring(offer, cmd, claimed_at)

        def when_paced() -> None:
            try:
                self.pacer.wait()
                self._ring(offer, cmd)
            finally:
                self._pacing.discard(g)
        g = gevent.spawn(when_paced)
        self._pacing.add(g)
        return True

    def drop_pending(self) -> None:
        """Forget offers still waiting for the pacer (another controller owns their contacts now)."""
        for g in list(self._pacing):
            g.kill(block=False)
        self._pacing.clear()

    def _ring(self, offer: Offer, cmd: str, claimed_at: float | None = None) -> bool:
        job = str(uuidlib.uuid4())
        self.legs.expect_job(job, offer.agent_leg_uuid)
        log.info("contact %s offered to agent %s on leg %s", offer.contact_id, offer.agent_name,
                 offer.agent_leg_uuid)
        try:
            self.switch.bgapi(cmd, job)
            self.health.sent()
            if claimed_at is not None and self.originate_timing is not None:
                self.originate_timing(time.time() - claimed_at)
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

    def _offers_on_a_lost_switch(self) -> None:
        """Our switch does not answer. An agent's phone rung through it cannot still be ringing after the
        ring time (the switch ends the originate itself, or it is gone with the switch), and an agent
        who answered there waits on a call that nobody can dial on: the offer goes back to the queue,
        not counted (the contact keeps its place and another controller may offer it). A customer's leg
        on the lost switch is another matter: see README 'A switch lost'."""
        cutoff = self.settings.agent_ring_timeout + LOST_OFFER_GRACE
        if self.switch.unreachable_for() < cutoff:
            return
        try:
            offers = self.store.contacts_in([C.OFFERED], mine=True)
        except SQLAlchemyError as e:
            log.warning("dispatcher: database unavailable looking at offers on a lost switch (%s)", type(e).__name__)
            return
        limit = datetime.now(timezone.utc) - timedelta(seconds=cutoff)
        for c in offers:
            offered = as_utc(c.offered_at)
            if offered is None or offered > limit:
                continue
            log.warning("contact %s: its offer on leg %s was rung through a switch that has not answered for %.0fs; "
                        "back to the queue", c.id, c.agent_leg_uuid, self.switch.unreachable_for())
            watch = self.legs.get(c.agent_leg_uuid)
            if watch is not None:
                watch.finished = True
                self.legs.forget(c.agent_leg_uuid)
            # Not asked (it cannot answer): its leg, if the agent picked up there, is hung up once it does.
            self.give_back_offer(c, lambda uuid: True, "switch unreachable")

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
            elif cause in PHONE_UNREACHABLE_CAUSES:     # never rang: no miss of the agent's
                self.store.offer_failed(offer, refused=False, reason=f"phone unreachable ({cause})",
                                        not_before=PHONE_UNREACHABLE_PAUSE)
            else:
                self.health.accepted(offer.agent_id)
                if cause is not None:      # a miss: the agent's delay for it, or OnBreak at max-no-answer
                    self.store.offer_failed(offer, refused=True, reason=f"agent did not take the call ({cause})",
                                            miss=miss_of(cause))
            if cause is not None:
                self.wake()
                if cause in NO_CHANNEL_CAUSES:
                    return True       # no channel was ever created: no hangup events will follow
            return watch.hangup_done
        if name == "CHANNEL_ANSWER":
            if watch.answered:          # a resync after a reconnect may repeat the answer
                return False
            watch.answered = True
            try:
                self._agent_answered(watch, answered_at(ev))
            except SQLAlchemyError:
                # Not acted on: the lane retries this very event, which must then not look repeated
                # (it did, and an answer met by a database outage was dropped: issue 17).
                watch.answered = False
                raise
            return False
        if name == "CHANNEL_HANGUP":
            if watch.answered:
                self._agent_hung_up(watch, ev.get("Hangup-Cause"))
            return False
        if name == "RESUME_LIVE_BRIDGE":
            self._resume_live_bridge(watch)
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
        watch.caller_uuid = contact.caller_uuid
        self._bridge_live(watch)

    def _bridge_live(self, watch: LegWatch) -> None:
        """A live caller stored as connected: bridge them to the agent, and stop their script. A failed
        bridge is never left half done: the caller goes back to the queue (their place kept, their
        script going on) or, gone, ends as abandoned; the agent is released."""
        offer = watch.offer
        try:
            reply = self.switch.bridge(watch.caller_uuid, watch.uuid)
        except ESLError as e:
            # Sent or not, answered or not: ask the switch once it answers (RESUME_LIVE_BRIDGE).
            log.error("contact %s: no answer to uuid_bridge for the live caller (%s); checked again when the "
                      "switch answers", offer.contact_id, e)
            self._resume_live_bridge_later(watch)
            return
        if reply.startswith("+OK"):
            self._connected_live(watch)
            return
        caller_gone = not self.switch.leg_exists(watch.caller_uuid)
        log.error("contact %s: bridging caller %s to agent %s failed (%s): %s", offer.contact_id, watch.caller_uuid,
                  offer.agent_name, reply.strip(), "the caller is gone" if caller_gone else "back to the queue")
        live = self.callers.live(offer.contact_id)
        if live is not None and not caller_gone:
            live.connected = False          # their script goes on (music), their place kept
        watch.answered = False              # the agent's hangup below is not the end of a conversation
        self.store.live_bridge_failed(offer.contact_id, watch.uuid, caller_gone, f"bridge failed: {reply.strip()}")
        self.switch.kill(watch.uuid)
        self.wake()

    def _connected_live(self, watch: LegWatch) -> None:
        offer = watch.offer
        log.info("contact %s connected to agent %s (live)", offer.contact_id, offer.agent_name)
        live = self.callers.live(offer.contact_id)
        if live is not None and live.greenlet is not None:
            live.greenlet.kill(ConnectedToAgent(), block=False)

    def _resume_live_bridge_later(self, watch: LegWatch) -> None:
        def when_ready() -> None:
            self.switch.ready.wait()
            if self.legs.get(watch.uuid) is watch:
                self.legs.deliver(watch, synthetic("RESUME_LIVE_BRIDGE", watch.uuid))
        gevent.spawn_later(0.5, when_ready)

    def _resume_live_bridge(self, watch: LegWatch) -> None:
        leg = self.switch.leg_state(watch.caller_uuid)
        if leg is not None and leg.bridged_to == watch.uuid:
            self._connected_live(watch)
        else:
            self._bridge_live(watch)

    def _agent_hung_up(self, watch: LegWatch, cause: str) -> None:
        cid = watch.contact_id
        # The common case first: a conversation ended and the agent is free (with the next offer).
        if self.conversation_ended(cid, f"agent hung up ({cause})"):
            return
        contact = self.store.contact(cid)
        if contact.controller_id != self.store.controller_id:
            return            # another controller owns it now (it took us over): its legs are its business
        if contact.agent_leg_uuid != watch.uuid and contact.state != C.CONNECTED.value:
            return
        self.dialler.agent_left(contact, cause)


def offer_of(c) -> Offer:
    """The Offer of a stored contact: what an agent leg's handler needs when the offer was not made
    in this process (a restart, a lost offer)."""
    # The agent's name is not on the contact: the logs say "agent #ID" rather than nothing.
    return Offer(c.id, c.agent_id, f"#{c.agent_id}", "", c.agent_leg_uuid, bool(c.callback_requested), c.caller_uuid,
                 c.callback_number or c.original_ani or "", "")
