"""Step 1 of a callback's life: a caller arrives and their script runs.

FreeSWITCH hands each answered caller to our outbound-socket server (`socket ... async full`); one
greenlet per call stores the contact, runs the script (Reqagent queues it, Callback stores the
callback and hangs up), and books the end of the call. A live caller whose agent answers is
bridged by the dispatcher, which stops the script here (ConnectedToAgent).
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import gevent
from sqlalchemy.exc import SQLAlchemyError

from esl_cb.config import Settings
from esl_cb.db.base import ARRIVALS
from esl_cb.db.store import Store
from esl_cb.domain import script as scripts
from esl_cb.domain.numbers import InvalidNumber, normalize, storable
from esl_cb.domain.runtime import CallerGone, ConnectedToAgent, ScriptRunner
from esl_cb.domain.states import ContactState as C
from esl_cb.domain.states import Outcome
from esl_cb.esl.inbound import Event
from esl_cb.esl.outbound import CallChannel

from .guard import CallbackGuard
from .legs import LegRegistry, LegWatch, billsec
from .ports import HOLD_TONE, CallerVoice, LiveCall, MissingPrompts, StoreQueue
from .switch import SwitchLink

log = logging.getLogger(__name__)
# A caller whose arrival waits this long for a database connection hears music meanwhile.
HOLD_MUSIC_AFTER = 0.2
# What a queue's dialplan runs before `socket ... async full` hands the call to us.
DIALPLAN_APPS = ("set", "export", "ring_ready", "pre_answer", "answer", "socket")


class CallerSessions:
    def __init__(self, settings: Settings, store: Store, script: scripts.Script, legs: LegRegistry,
                 switch: SwitchLink, wake: Callable[[], None]) -> None:
        self.settings = settings
        self.store = store
        # Callers' arrivals hold at most a few of the database's connections (a burst of callers waits
        # for one, hearing music after HOLD_MUSIC_AFTER), so agents' answers, dials and bridges never
        # wait for one; and each of their transactions waits while one of those is handled
        # (legs.CriticalWork). Issue 12: both were measured waiting seconds behind a burst of callers.
        store.limit_arrivals(settings.arrival_db_connections, before=legs.critical.yield_to_it)
        self.script = script
        self.legs = legs
        self.switch = switch
        self.wake = wake
        # A live caller's conversation ended (the dispatcher completes it and offers the agent's next).
        self.conversation_ended: Callable[[int, str], bool] = lambda contact_id, reason: False
        self.calls: dict[int, LiveCall] = {}      # contact id -> live caller
        self.missing_prompts = MissingPrompts()
        self.guard: CallbackGuard | None = None  # the destination policy (set by the controller)
        self.features = None                     # agents' feature codes (features.FeatureCalls)
        legs.handlers["caller"] = self.caller_event

    def live(self, contact_id: int) -> LiveCall | None:
        return self.calls.get(contact_id)

    def stop(self) -> None:
        for call in list(self.calls.values()):
            if call.greenlet is not None:
                call.greenlet.kill(block=False)

    # -- one call, start to end (its own greenlet) ------------------------------
    def on_call(self, channel: CallChannel) -> None:
        if self.features is not None and self.features.wanted(channel):
            self.features.on_call(channel)          # an agent's feature code, not a caller for a queue
            return
        ARRIVALS.set(True)           # this greenlet's database work waits its turn (db/base.PriorityPool)
        data = channel.data
        ani = data.get("Caller-Caller-ID-Number", "")
        dnis = data.get("Caller-Destination-Number", "")
        arrival = self._create_contact(channel, ani, dnis)
        if arrival is None:
            return
        contact_id, pending = arrival
        variables = {"ANI": ani, "DNIS": dnis, "ContactID": str(contact_id), "CallbackPending": "0",
                     "PendingContactID": ""}
        if pending is not None:
            # Documented: a caller whose callback is still queued is recognised; scripts may branch on it.
            variables.update(CallbackPending="1", PendingContactID=str(pending))
            log.info("contact %s: caller %s already has callback contact %s queued", contact_id, ani, pending)
        live = LiveCall(contact_id, channel)
        live.greenlet = gevent.getcurrent()
        self.calls[contact_id] = live
        self.legs.watch(LegWatch(channel.uuid, "caller", contact_id))

        def gone() -> None:
            if not live.expect_hangup and not live.connected and live.greenlet is not None:
                live.greenlet.kill(CallerGone(), block=False)
        channel.on_gone = gone
        if self.legs.observer is not None:
            observer = self.legs.observer

            def seen(name: str, app: str) -> None:
                # Not the dialplan's applications that ran before the call was handed to us (the switch
                # delivers their completions late, so whether one reaches us depends on how fast the
                # arrival was stored): the controller acts on none of them.
                if not (name.startswith("CHANNEL_EXECUTE") and app in DIALPLAN_APPS):
                    observer("caller-socket", name, app)
            channel.observer = seen
        runner = ScriptRunner(self.script, CallerVoice(live, self.missing_prompts),
                              StoreQueue(self.store, contact_id, self.wake, self.guard, storable(ani)), variables,
                              default_region=self.settings.region, contact_label=f"contact {contact_id}")
        try:
            try:
                result = runner.run()
            except (CallerGone, ConnectedToAgent) as e:     # raised between two actions
                result = None
                ended_by = "agent" if isinstance(e, ConnectedToAgent) else "caller"
            else:
                ended_by = result.ended_by
            # The script is over: from here on a hangup must not interrupt our book-keeping.
            live.greenlet = None
            in_callback = bool(result and result.in_callback)
            if result is not None:
                log.debug("contact %s script %s ended by %s; variables: %s", contact_id, self.script.name,
                          ended_by, result.variables)
            for _ in range(3):
                try:
                    # A kill sent just before we cleared the greenlet lands here, not in the middle of a
                    # query below (psycopg2 closes a connection whose query a kill interrupts).
                    gevent.sleep(0)
                    self._after_script(live, contact_id, ended_by, in_callback)
                    break
                except (CallerGone, ConnectedToAgent):
                    continue          # a kill sent just before we cleared the greenlet: redo (guarded)
        finally:
            self.calls.pop(contact_id, None)

    def _create_contact(self, channel: CallChannel, ani: str, dnis: str) -> tuple[int, int | None] | None:
        """Store the new contact, and find a callback of this caller still waiting (the script may
        branch on it). While the database is away the caller hears music, for a while."""
        try:
            number = normalize(ani, self.settings.region)
        except InvalidNumber:
            number = None
        deadline = time.time() + self.settings.db_wait
        music = False

        def hold() -> None:
            nonlocal music
            music = True
            self._hold_music(channel)
        waiting = gevent.spawn_later(HOLD_MUSIC_AFTER, hold)
        try:
            while True:
                try:
                    arrival = self.store.arrive(channel.uuid, storable(ani), storable(dnis), self.script.name,
                                                storable(ani), storable(dnis), callback_number=number)
                    break
                except SQLAlchemyError as e:
                    if time.time() > deadline or channel.gone.is_set():
                        log.error("call %s: database unavailable for %ss, cannot take the call (%s)", channel.uuid,
                                  self.settings.db_wait, type(e).__name__)
                        channel.hangup("NORMAL_TEMPORARY_FAILURE")
                        return None
                    if not music:
                        waiting.kill(block=False)
                        waiting = gevent.spawn(hold)
                    gevent.sleep(1.0)
        finally:
            if not music:
                waiting.kill(block=False)
        if music:
            try:
                channel.break_media()
            except Exception:
                pass
        return arrival

    @staticmethod
    def _hold_music(channel: CallChannel) -> None:
        try:
            done = channel.execute("playback", "local_stream://moh")
            if done.get("Application-Response") == "FILE NOT FOUND":      # no music source on this switch
                channel.execute("playback", HOLD_TONE)
        except Exception:
            pass

    def _after_script(self, live: LiveCall, contact_id: int, ended_by: str, in_callback: bool) -> None:
        channel = live.channel
        if ended_by == "agent" or live.connected:
            channel.gone.wait()
            return
        self._script_ended(contact_id, ended_by, in_callback)
        if not channel.gone.is_set():
            live.expect_hangup = True
            channel.hangup()
            channel.gone.wait(timeout=5)

    def _script_ended(self, contact_id: int, ended_by: str, in_callback: bool) -> None:
        if in_callback:
            return            # the callback waits in the queue; the caller's leg is simply over
        reason = "caller hung up" if ended_by == "caller" else "script ended"
        try:
            if self.store.end_contact(contact_id, [C.ARRIVED], Outcome.NOT_QUEUED, reason):
                return
            if self.store.end_contact(contact_id, [C.QUEUED], Outcome.ABANDONED, reason):
                return
            agent_id = self.store.abandon_offer(contact_id, reason)
            if agent_id is not None:
                contact = self.store.contact(contact_id)
                self.switch.kill(contact.agent_leg_uuid)
                self.wake()
        except SQLAlchemyError as e:
            log.error("contact %s: could not record the end of the call (%s); reconcile will", contact_id, e)

    # -- the caller leg's events from the inbound connection ---------------------
    def caller_event(self, watch: LegWatch, ev: Event) -> bool:
        if ev.name == "CHANNEL_HANGUP":
            contact = self.store.contact(watch.contact_id)
            if contact.state == C.CONNECTED.value and not contact.callback_requested:
                if self.conversation_ended(watch.contact_id, f"caller hung up ({ev.get('Hangup-Cause')})"):
                    # A caller gone just as the bridge was being made leaves the agent's answered leg
                    # parked (uuid_bridge said +OK, it never took): the conversation is over, end it.
                    self.switch.kill(contact.agent_leg_uuid)
        if ev.name == "CHANNEL_HANGUP_COMPLETE":
            self.store.leg_ended(watch.uuid, ev.get("Hangup-Cause"), billsec(ev), True)
            return True
        return False
