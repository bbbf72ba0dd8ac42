"""After a restart, a reconnection or a takeover: rebuild from the database and FreeSWITCH, so nothing
is stuck and nobody is dialled twice.

Only this controller's contacts are examined. The origination uuids we stored decide whether a leg
exists (a dial is never sent twice). `show channels` gives one snapshot of every leg but lags the live
calls by ~200 ms (esl-captures 13): it only spares us questions, and every decision about one leg
asks that leg (uuid_dump). A customer who answered while we were away is bridged at once.
"""
from __future__ import annotations

import json
import logging
import uuid as uuidlib
from datetime import datetime, timezone

from gevent.lock import Semaphore

from esl_cb.config import Settings
from esl_cb.db.store import DialPlan, Store, as_utc
from esl_cb.domain.states import ContactState as C
from esl_cb.domain.states import Outcome
from esl_cb.esl.inbound import ESLError

from .callers import CallerSessions
from .dialler import Dialler
from .dispatcher import Dispatcher, offer_of
from .legs import LegRegistry, LegWatch, synthetic
from .switch import LegState, SwitchLink

log = logging.getLogger(__name__)


class SwitchView:
    """What FreeSWITCH has now, as reconciliation needs it: `show channels` (one call, lagging) only
    answers "yes, it exists"; a leg it does not list, and the state of any leg, are asked of the leg."""

    def __init__(self, switch: SwitchLink, snapshot: bool = True) -> None:
        self._api = switch.api
        self.live = switch.leg_state
        self._listed: set[str] = self._show_channels() if snapshot else set()

    def _show_channels(self) -> set[str]:
        body = self._api("show channels as json")
        try:
            data = json.loads(body)
        except ValueError:
            raise ESLError(f"'show channels as json' did not return JSON: {body[:80]!r}") from None
        return {row["uuid"] for row in data.get("rows", [])}

    def exists(self, uuid: str | None) -> bool:
        return bool(uuid) and (uuid in self._listed or self.live(uuid) is not None)


class Recovery:
    def __init__(self, settings: Settings, store: Store, switch: SwitchLink, legs: LegRegistry,
                 callers: CallerSessions, dispatcher: Dispatcher, dialler: Dialler) -> None:
        self.settings = settings
        self.store = store
        self.switch = switch
        self.legs = legs
        self.callers = callers
        self.dispatcher = dispatcher
        self.dialler = dialler
        self._lock = Semaphore()
        self._wanted = False
        self.runs = 0

    def reconcile(self) -> None:
        """Runs at every (re)connection and after taking over a dead controller's contacts. One run at
        a time (two interleaved runs could each watch a leg and take its voice port: a port lost for
        good, issue 17); a request made while one runs is served by one more run after it."""
        self._wanted = True
        with self._lock:
            if not self._wanted:
                return          # a run that began after this request has covered it
            self._wanted = False
            self.runs += 1
            self._reconcile()

    def reconcile_contact(self, contact_id: int) -> None:
        """Look at one contact again as a whole, from what is stored and what the switch has: after a
        step that failed half way (its handler raised something other than a database error)."""
        with self._lock:
            c = self.store.contact(contact_id)
            if c.state == C.ENDED.value or c.controller_id != self.store.controller_id:
                return
            for uuid in (c.agent_leg_uuid, c.callback_leg_uuid):
                watch = self.legs.get(uuid)
                if watch is not None:               # rebuilt below from the stored state
                    self.dialler.release_voice_port(watch)
                    watch.finished = True
                    self.legs.forget(uuid)
            timer = self.dialler.timers.pop(contact_id, None)
            if timer is not None:
                timer.kill(block=False)
            log.warning("contact %s: reconciling it (%s) after a failed step", contact_id, c.state)
            steps = {C.ARRIVED.value: self._waiting_callers, C.QUEUED.value: self._waiting_callers,
                     C.OFFERED.value: self._offers, C.ACCEPTED.value: self._accepted,
                     C.DIALLING.value: self._dialling, C.CONNECTED.value: self._connected}
            step = steps.get(c.state)
            if step is not None:
                watched_before = set(self.legs.legs)
                view = SwitchView(self.switch, snapshot=False)
                step(view, [c])
                fresh = {u: w for u, w in self.legs.legs.items() if u not in watched_before}
                if fresh:
                    self.resync_watched(view, only=fresh)

    def _reconcile(self) -> None:
        view = SwitchView(self.switch)
        self.resync_watched(view)
        watched_before = set(self.legs.legs)
        for step in (self._waiting_callers, self._offers, self._accepted, self._dialling, self._connected):
            step(view)
        # A leg that ended between our look and its watch being attached sent its events to
        # nobody: a second look, leg by leg, catches it (handlers are guarded, a duplicate is harmless).
        fresh = {u: w for u, w in self.legs.legs.items() if u not in watched_before}
        if fresh:
            self.resync_watched(SwitchView(self.switch, snapshot=False), only=fresh)

    def resync_watched(self, view: SwitchView, only: dict[str, LegWatch] | None = None) -> None:
        """Events lost while the connection was down: tell each watched leg what happened meanwhile."""
        for watch in list((only or self.legs.legs).values()):
            if watch.kind == "caller":
                # A caller's own socket reports its hangup; only a leg the switch no longer has needs help.
                leg = LegState(True, "") if view.exists(watch.uuid) else None
            else:
                leg = view.live(watch.uuid)
            if leg is not None:
                if watch.kind != "caller" and not watch.answered and leg.answered:
                    self.legs.deliver(watch, synthetic("CHANNEL_ANSWER", watch.uuid))
                continue
            lost = []
            if watch.kind != "caller" and not watch.answered and not watch.job_done:
                lost.append(synthetic("BACKGROUND_JOB", watch.uuid, body=b"-ERR DESTINATION_OUT_OF_ORDER\n"))
            lost += [synthetic("CHANNEL_HANGUP", watch.uuid), synthetic("CHANNEL_HANGUP_COMPLETE", watch.uuid)]
            log.warning("contact %s: leg %s ended while we were disconnected", watch.contact_id, watch.uuid)
            for ev in lost:
                self.legs.deliver(watch, ev)

    # -- each stored state -------------------------------------------------------------
    def _waiting_callers(self, view: SwitchView, contacts: list | None = None) -> None:
        for c in self._mine([C.ARRIVED, C.QUEUED], contacts):
            if self.callers.live(c.id) is None and not view.exists(c.caller_uuid):
                self.store.end_contact(c.id, [C(c.state)], Outcome.ABANDONED if c.state == C.QUEUED.value
                                       else Outcome.NOT_QUEUED, "caller gone while the controller was away")

    def _offers(self, view: SwitchView, contacts: list | None = None) -> None:
        for c in self._mine([C.OFFERED], contacts):
            if c.agent_leg_uuid not in self.legs:
                self.dispatcher.give_back_offer(c, view.exists, "offer interrupted by a restart")

    def _accepted(self, view: SwitchView, contacts: list | None = None) -> None:
        """CallDelaySec was running: resume it from the stored due time, or find the dial sent."""
        exists = view.exists
        for c in self._mine([C.ACCEPTED], contacts):
            if c.id in self.dialler.timers or c.agent_leg_uuid in self.legs:
                continue
            due = as_utc(c.dial_due_at)
            if c.callback_leg_uuid and due <= datetime.now(timezone.utc):
                # Due before the crash: the originate may have gone out. Its uuid decides.
                if exists(c.callback_leg_uuid) and exists(c.agent_leg_uuid):
                    plan = self.store.prepared_plan(c.id)
                    if plan and self.store.mark_dialling(plan):
                        self._reattach_callback(self.store.contact(c.id), view)
                        continue
                self._interrupted(c)
                continue
            if exists(c.agent_leg_uuid):
                self.legs.watch(LegWatch(c.agent_leg_uuid, "agent", c.id, offer=offer_of(c), answered=True,
                                         job_done=True))
                plan = None if c.callback_leg_uuid else self.store.prepare_dial(c.id, str(uuidlib.uuid4()))
                self.dialler.schedule(c.id, due, plan)          # resumes from the persisted due time
            else:
                self.store.agent_left_before_dial(c.id, "agent leg gone while the controller was away")

    def _dialling(self, view: SwitchView, contacts: list | None = None) -> None:
        for c in self._mine([C.DIALLING], contacts):
            if c.callback_leg_uuid in self.legs:
                continue
            if view.exists(c.callback_leg_uuid) and view.exists(c.agent_leg_uuid):
                self._reattach_callback(c, view)
            else:
                # Persisted as 'about to originate' but the leg is not there: it never rang, or it
                # is over. Either way it is not redialled here: the contact goes back to the queue.
                self._interrupted(c)

    def _connected(self, view: SwitchView, contacts: list | None = None) -> None:
        for c in self._mine([C.CONNECTED], contacts):
            legs = [u for u in (c.caller_uuid, c.agent_leg_uuid, c.callback_leg_uuid) if u]
            if any(u in self.legs for u in legs):
                continue
            alive = [u for u in legs if view.exists(u)]
            if len(alive) < 2:
                for u in alive:
                    self.switch.kill(u)
                self.store.complete(c.id, "ended while the controller was away")   # the dispatcher offers next
            elif c.callback_requested:
                self._reattach_callback(c, view)
            else:
                self.legs.watch(LegWatch(c.caller_uuid, "caller", c.id))
                self.legs.watch(LegWatch(c.agent_leg_uuid, "agent", c.id, offer=offer_of(c), answered=True,
                                         job_done=True))

    def _mine(self, states: list[C], contacts: list | None) -> list:
        return self.store.contacts_in(states, mine=True) if contacts is None else contacts

    def _interrupted(self, c) -> None:
        self.switch.kill(c.callback_leg_uuid)
        self.switch.kill(c.agent_leg_uuid)
        self.store.dial_failed(c.id, c.callback_leg_uuid, "interrupted", 0, self.settings.max_attempts, counts=False)

    def _reattach_callback(self, c, view: SwitchView) -> None:
        """Watch a callback's two legs again. A customer who answered while we were away is bridged at
        once: the answer goes through the same handler as a live CHANNEL_ANSWER would (stored, then
        bridged); legs stored as connected but not bridged (a crash between the two) are bridged."""
        plan = DialPlan.of(c, c.attempts, c.callback_leg_uuid)
        leg = view.live(c.callback_leg_uuid)
        connected = c.state == C.CONNECTED.value
        watch = self.dialler.watch_with_voice_port(LegWatch(c.callback_leg_uuid, "callback", c.id, plan=plan,
                                                answered=connected, job_done=True))
        self.legs.watch(LegWatch(c.agent_leg_uuid, "agent", c.id, offer=offer_of(c), answered=True, job_done=True))
        if connected:
            if leg is not None and leg.bridged_to != c.agent_leg_uuid:
                log.warning("contact %s: connected but its legs are not bridged; bridging them", c.id)
                self.legs.deliver(watch, synthetic("RESUME_BRIDGE", c.callback_leg_uuid))
        elif leg is not None and leg.answered:
            log.warning("contact %s: the customer answered leg %s while we were away; connecting them now",
                        c.id, c.callback_leg_uuid)
            self.legs.deliver(watch, synthetic("CHANNEL_ANSWER", c.callback_leg_uuid))
        else:
            log.info("contact %s: re-attached to the ringing callback leg %s", c.id, c.callback_leg_uuid)
