"""The controller: wires FreeSWITCH (ESL), the store and the scripts together and owns the greenlets.

Flow of a contact (SPEC 2 and 3):
  caller arrives -> script (Reqagent queues it) -> dispatcher offers it to the
  longest-idle agent (originates the agent's phone) -> agent answers ->
    live caller: bridge at once;
    callback: wait CallDelaySec (a persisted due time), dial the customer,
              bridge when they answer; busy/no answer releases the agent and
              retries later.
Every step is stored (guarded by the expected state) before it is acted on.
"""
from __future__ import annotations

import json
import logging
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Callable
from datetime import datetime, timedelta, timezone

import gevent
from gevent.event import Event as GEvent
from gevent.queue import Queue
from sqlalchemy.exc import SQLAlchemyError

from esl_cb.config import Settings
from esl_cb.db.store import DialPlan, Offer, Store, as_utc
from esl_cb.domain import script as scripts
from esl_cb.domain.numbers import InvalidNumber, normalize, storable
from esl_cb.domain.runtime import CallerGone, ConnectedToAgent, ScriptRunner
from esl_cb.domain.states import ContactState as C
from esl_cb.domain.states import Outcome
from esl_cb.esl import commands
from esl_cb.esl.inbound import ESLError, Event, InboundConnection
from esl_cb.esl.outbound import CallChannel, CallServer
from esl_cb.esl.prompts import check_prompts
from esl_cb.netaddr import parse_hostport

from .call import ChannelCall, LiveCall, MissingPrompts, StoreQueue
from .pacing import OriginatePacer, SwitchBackoff

log = logging.getLogger(__name__)

EVENTS = ["CHANNEL_ANSWER", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_BRIDGE", "BACKGROUND_JOB",
          "SHUTDOWN"]
# Causes that say the switch (not the person) could not place the call: back off, try again, count
# nothing against the agent or the customer. A switch shutting down hangs up with SYSTEM_SHUTDOWN.
SWITCH_LIMIT_CAUSES = {"DESTINATION_OUT_OF_ORDER", "NORMAL_CIRCUIT_CONGESTION", "SWITCH_CONGESTION",
                       "SYSTEM_SHUTDOWN"}
# ...and, while it shuts down, originates fail with these as its modules unload (measured).
SHUTDOWN_CAUSES = {"CHAN_NOT_IMPLEMENTED", "INVALID_PROFILE"}
# Originate failures where FreeSWITCH never created a channel, so no hangup events follow.
NO_CHANNEL_CAUSES = {"CHAN_NOT_IMPLEMENTED", "INVALID_PROFILE", "USER_NOT_REGISTERED", "DESTINATION_OUT_OF_ORDER"}
LOST_OFFER_GRACE = 5.0     # seconds past the agent ring timeout before an unwatched offer counts as lost
RESULT_OF_CAUSE = {"USER_BUSY": "busy", "NO_ANSWER": "no_answer", "NO_USER_RESPONSE": "no_answer",
                   "CALL_REJECTED": "rejected", "ORIGINATOR_CANCEL": "cancelled"}


@dataclass
class LegWatch:
    """One leg we placed or are watching; its events are handled in order by one greenlet."""

    uuid: str
    kind: str                                  # agent | callback | caller
    contact_id: int
    offer: Offer | None = None
    plan: DialPlan | None = None
    answered: bool = False
    # A placed leg is finished when both its hangup and its BACKGROUND_JOB were seen:
    # FreeSWITCH sends them in either order (capture 04).
    job_done: bool = False
    hangup_done: bool = False
    holds_port: bool = False                   # a callback leg counted in ports_in_use
    queue: Queue = field(default_factory=Queue)
    worker: gevent.Greenlet | None = None


class Controller:
    def __init__(self, settings: Settings, store: Store | None = None, script: scripts.Script | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.db, settings.controller_id)
        self.script = script or scripts.load(settings.script or scripts.DEFAULT_SCRIPT)
        self.esl: InboundConnection | None = None
        self.server: CallServer | None = None
        self.legs: dict[str, LegWatch] = {}
        self.jobs: dict[str, str] = {}            # Job-UUID -> leg uuid
        self.calls: dict[int, LiveCall] = {}      # contact id -> live caller
        self.timers: dict[int, gevent.Greenlet] = {}
        self.dial_due: dict[int, datetime] = {}         # CallDelaySec due times of the timers above
        self.plans: dict[int, DialPlan] = {}      # contact id -> the prepared dial, sent when due
        self.ports_in_use = 0
        self.pacer = OriginatePacer(settings.originate_rate)   # under the switch's sessions-per-second
        self.missing_prompts = MissingPrompts()
        self.backoff = SwitchBackoff()            # the switch refusing new sessions: pause, do not loop
        self._port_freed = GEvent()
        self._wake = GEvent()
        self._running = False
        self._greenlets: list[gevent.Greenlet] = []
        self.esl_ready = GEvent()
        self.switch_stopping = False              # FreeSWITCH announced its shutdown
        self._prompts_checked = False
        self.reconnects = 0
        self.metrics = None                       # Metrics, when --metrics-port is set
        # Tests compare what the controller saw on the simulator and on the real switch:
        # when set, called with (leg kind, event name, application) for every event it routes.
        self.observer: Callable[[str, str, str], None] | None = None

    # -- life cycle -----------------------------------------------------
    def start(self) -> "Controller":
        self._running = True
        host, port = parse_hostport(self.settings.listen)
        self.server = CallServer(host, port, self._on_call)
        self._greenlets.append(gevent.spawn(self.server.listen))
        if not self.server.ready.wait(5):
            raise RuntimeError("outbound-socket server did not start")
        self._greenlets.append(gevent.spawn(self._keep_esl))
        self._greenlets.append(gevent.spawn(self._dispatch_loop))
        self._greenlets.append(gevent.spawn(self._heartbeat_loop))
        if self.store.engine.dialect.name == "postgresql":
            self._greenlets.append(gevent.spawn(self._listen_for_wakeups))
        log.info("controller %s started: %s", self.settings.controller_id, self.settings.masked())
        return self

    @property
    def listen_port(self) -> int:
        return self.server.bound_port if self.server else 0

    def stop(self) -> None:
        self._running = False
        if self.metrics is not None:
            self.metrics.stop()
        if self.server is not None:
            self.server.stop()
        if self.esl is not None:
            self.esl.close()
        for g in list(self.timers.values()) + self._greenlets:
            g.kill(block=False)
        for call in list(self.calls.values()):
            if call.greenlet is not None:
                call.greenlet.kill(block=False)

    def check_prompts(self) -> list:
        """Name, at start, every prompt and stream of the script that the switch cannot play (a caller
        would otherwise find out: a menu whose prompt is missing never hears its key)."""
        prompts = scripts.script_prompts(self.script)
        try:
            problems = check_prompts(self._api, prompts)
        except ESLError as e:
            log.warning("could not check the script's prompts on FreeSWITCH: %s", e)
            return []
        for p in problems:
            if p.missing:
                log.error("script %s: %s; install it on the switch or change the script", self.script.file, p)
            else:
                log.warning("script %s: %s", self.script.file, p)
        if not problems:
            log.info("script %s: all %d prompts are on the switch", self.script.file, len(prompts))
        return problems

    def wake_dispatcher(self) -> None:
        self._wake.set()

    def _heartbeat_loop(self) -> None:
        """Say we are alive; take over the contacts of controllers that stopped saying so."""
        while self._running:
            try:
                self.store.heartbeat(self.settings.esl)
                if self.store.adopt_dead(self.settings.heartbeat_timeout) and self.esl_ready.is_set():
                    self.reconcile()
                    self.wake_dispatcher()
            except SQLAlchemyError as e:
                log.warning("heartbeat: database unavailable (%s)", type(e).__name__)
            except ESLError as e:
                log.warning("heartbeat: reconcile after a takeover failed (%s); retrying", e)
            gevent.sleep(self.settings.heartbeat_interval)

    def _listen_for_wakeups(self) -> None:
        """LISTEN for NOTIFY from the CLI and other controllers; polling stays the backstop."""
        import select as _select

        while self._running:
            try:
                raw = self.store.engine.raw_connection()
                try:
                    dbapi = raw.driver_connection
                    dbapi.autocommit = True
                    with dbapi.cursor() as cur:
                        cur.execute(f"LISTEN {Store.NOTIFY_CHANNEL}")
                    while self._running:
                        ready, _, _ = _select.select([dbapi], [], [], 5.0)
                        if ready:
                            dbapi.poll()
                            if dbapi.notifies:
                                dbapi.notifies.clear()
                                self.wake_dispatcher()
                finally:
                    raw.invalidate()
            except Exception as e:      # database restarting: polling covers us meanwhile
                log.warning("LISTEN for wake-ups failed (%s); retrying", type(e).__name__)
                gevent.sleep(1.0)

    def _keep_esl(self) -> None:
        """Stay connected to FreeSWITCH: reconnect with backoff, then reconcile."""
        backoff = 0.1
        ehost, eport = parse_hostport(self.settings.esl)
        while self._running:
            lost = GEvent()
            conn = InboundConnection(ehost, eport, self.settings.esl_password, self._on_event, lost.set)
            try:
                conn.connect(EVENTS)
            except Exception as e:      # ESLError mostly; this greenlet must never die
                log.warning("FreeSWITCH not reachable (%s); retrying in %.1fs", e, backoff)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            self.esl = conn
            self.switch_stopping = False
            log.info("connected to FreeSWITCH at %s:%d", ehost, eport)
            try:
                self.reconcile()
            except Exception:
                log.exception("reconciling with FreeSWITCH failed; will retry on the next poll")
            if not self._prompts_checked:
                self._prompts_checked = True
                gevent.spawn(self.check_prompts)
            self.esl_ready.set()
            self.wake_dispatcher()
            lost.wait()
            self.esl_ready.clear()
            if self._running:
                self.reconnects += 1
                if self.metrics is not None:
                    self.metrics.reconnects.inc()
                log.warning("lost the ESL connection to FreeSWITCH; reconnecting")

    # -- events from the inbound connection (never block here) ---------
    def _on_event(self, ev: Event) -> None:
        name = ev.name
        if name == "SHUTDOWN":
            # Calls are about to be cut and modules unloaded: offer nothing until we reconnect.
            log.warning("FreeSWITCH is shutting down; no offers or dials until it is back")
            self.switch_stopping = True
            self.esl_ready.clear()
            return
        if name == "BACKGROUND_JOB":
            leg = self.jobs.pop(ev.get("Job-UUID"), None)
            watch = self.legs.get(leg) if leg else None
        else:
            watch = self.legs.get(ev.uuid)
        if watch is not None:
            if self.observer is not None:
                self.observer(watch.kind, name, "")
            self._deliver(watch, ev)

    def _watch(self, watch: LegWatch) -> LegWatch:
        """Route this leg's events to it. Its worker greenlet starts with the first event: a caller
        waiting in queue gets none for minutes, and 2,000 idle greenlets cost memory."""
        self.legs[watch.uuid] = watch
        return watch

    def _deliver(self, watch: LegWatch, ev: Event) -> None:
        watch.queue.put(ev)
        if watch.worker is None:
            watch.worker = gevent.spawn(self._leg_worker, watch)

    def _leg_worker(self, watch: LegWatch) -> None:
        handler = {"agent": self._agent_event, "callback": self._callback_event, "caller": self._caller_event}[watch.kind]
        while True:
            ev = watch.queue.get()
            backoff = 0.2
            while True:
                try:
                    done = handler(watch, ev)
                    break
                except SQLAlchemyError as e:
                    # Never act without storing: hold this leg's events until the database is back.
                    log.error("contact %s leg %s: database unavailable handling %s (%s); retrying in %.1fs",
                              watch.contact_id, watch.uuid, ev.name, type(e).__name__, backoff)
                    gevent.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                except Exception:
                    log.exception("contact %s leg %s: handling %s failed", watch.contact_id, watch.uuid, ev.name)
                    done = False
                    break
            if done:
                self.legs.pop(watch.uuid, None)
                return

    def _api(self, cmd: str) -> str:
        if self.esl is None or not self.esl.connected:
            raise ESLError("not connected to FreeSWITCH")
        return self.esl.api(cmd)

    def _kill(self, uuid: str | None, cause: str = "NORMAL_CLEARING") -> None:
        if not uuid:
            return
        try:
            self._api(f"uuid_kill {uuid} {cause}")
        except ESLError as e:
            log.warning("could not hang up %s: %s", uuid, e)

    # -- dispatching offers ---------------------------------------------
    def _dispatch_loop(self) -> None:
        next_sweep = time.monotonic()
        while self._running:
            pause = self.backoff.remaining()
            if pause > 0:          # the switch is refusing sessions: wake-ups wait too
                gevent.sleep(min(pause, self.settings.poll_interval))
            else:
                self._wake.wait(timeout=self.settings.poll_interval)
            self._wake.clear()
            if not self.esl_ready.is_set():
                continue
            try:
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + max(5 * self.settings.poll_interval, 1.0)
                    self._sweep_lost_offers()
                self._reset_refused()
                if self.backoff.remaining() <= 0:
                    self._offer_waiting()
            except SQLAlchemyError as e:
                log.error("dispatcher: database unavailable (%s); retrying", type(e).__name__)
                gevent.sleep(min(self.settings.poll_interval, 1.0))

    def _complete(self, contact_id: int, reason: str) -> bool:
        """A conversation ended. The freed agent's next offer is claimed in the same transaction and
        rung at once, here: no wake-up hop, no wrap-up penalty. True if this call completed it."""
        claim = str(uuidlib.uuid4()) if self.esl_ready.is_set() and self.backoff.remaining() <= 0 else None
        completed, offer = self.store.complete(contact_id, reason, claim_leg_uuid=claim)
        if offer is not None:
            self._start_offer(offer)
        return completed

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
            self._give_back_offer(c, self._leg_exists, "offer lost")

    def _leg_exists(self, uuid: str | None) -> bool:
        return bool(uuid) and self._api(f"uuid_exists {uuid}").strip() == "true"

    def _give_back_offer(self, c, exists, reason: str) -> None:
        """An unwatched offer: hang up its agent leg if the switch has one; the contact keeps its place
        (a live caller who left ends as abandoned)."""
        offer = Offer(c.id, c.agent_id, "", "", c.agent_leg_uuid, c.callback_requested, c.caller_uuid,
                      c.callback_number or c.original_ani, "")
        if exists(c.agent_leg_uuid):
            self._kill(c.agent_leg_uuid)
        if c.callback_requested or c.id in self.calls:
            self.store.offer_failed(offer, refused=False, reason=reason)
        else:
            self.store.abandon_offer(c.id, "caller gone while the controller was away")

    def _offer_waiting(self) -> None:
        """Match waiting contacts with free agents until one side runs out."""
        while self._running and self.esl_ready.is_set() and self.backoff.remaining() <= 0:
            offer = self.store.claim_offer(str(uuidlib.uuid4()))
            if offer is None:
                return
            if not self._start_offer(offer):
                return                # the switch refused: wait for the next wake-up or poll

    def _reset_refused(self) -> None:
        if self.settings.refused_reset > 0:
            self.store.reset_refused(self.settings.refused_reset)

    def _start_offer(self, offer: Offer) -> bool:
        self._watch(LegWatch(offer.agent_leg_uuid, "agent", offer.contact_id, offer=offer))
        number = offer.contact_number or "0"
        label = f"Callback {number}" if offer.callback else f"{offer.skill} {number}"
        cmd = commands.originate(offer.agent_leg_uuid, offer.dial_string, {
            "origination_caller_id_number": number, "origination_caller_id_name": label,
            "esl_cb_contact_id": offer.contact_id, "esl_cb_role": "agent",
            "originate_timeout": self.settings.agent_ring_timeout, "ignore_early_media": "true"})
        job = str(uuidlib.uuid4())
        self.jobs[job] = offer.agent_leg_uuid
        log.info("contact %s offered to agent %s on leg %s", offer.contact_id, offer.agent_name,
                 offer.agent_leg_uuid)
        try:
            self.pacer.wait()
            self.esl.bgapi(cmd, job_uuid=job)
            self._probe(self.backoff.sent())
        except (ESLError, AttributeError) as e:
            self.jobs.pop(job, None)
            self.legs.pop(offer.agent_leg_uuid, None)
            log.error("contact %s: could not ring agent %s: %s", offer.contact_id, offer.agent_name, e)
            self.store.offer_failed(offer, refused=False, reason="switch unreachable")
            return False
        return True

    def _agent_event(self, watch: LegWatch, ev: Event) -> bool:
        offer = watch.offer
        name = ev.name
        if name == "BACKGROUND_JOB":
            cause = _job_failed(watch, ev)
            if _switch_side(cause, self.switch_stopping):
                _, agent_pause = self._switch_refused(cause, offer.agent_id)
                self.store.offer_failed(offer, refused=False, reason=f"switch refused the call ({cause})",
                                        not_before=agent_pause)
            else:
                self._switch_accepted(offer.agent_id)
                if cause is not None:
                    self.store.offer_failed(offer, refused=True, reason=f"agent did not take the call ({cause})")
            if cause is not None:
                self.wake_dispatcher()
                if cause in NO_CHANNEL_CAUSES:
                    return True       # no channel was ever created: no hangup events will follow
            return watch.hangup_done
        if name == "CHANNEL_ANSWER":
            if watch.answered:          # a resync after a reconnect may repeat the answer
                return False
            watch.answered = True
            self._agent_answered(watch, _answered_at(ev))
            return False
        if name == "CHANNEL_HANGUP":
            if watch.answered:
                self._agent_hung_up(watch, ev.get("Hangup-Cause"))
            return False
        if name == "CHANNEL_HANGUP_COMPLETE":
            self.store.leg_ended(watch.uuid, ev.get("Hangup-Cause"), _int(ev.variable("billsec")), watch.answered)
            watch.hangup_done = True
            return watch.job_done
        return False

    def _switch_refused(self, cause: str, agent_id: int | None = None) -> tuple[float, float]:
        """FreeSWITCH refused a new session (it is full): back off, say so once per episode."""
        pause, agent_pause = self.backoff.refused(agent_id)
        if self.backoff.refusals == 1:
            log.warning("FreeSWITCH refuses new calls (%s: max-sessions, sessions-per-second or RTP ports used "
                        "up); offers and dials back off, growing to at most %gs, until it takes one again",
                        cause, self.backoff.cap)
        if self.metrics is not None:
            self.metrics.switch_refusals.inc()
            self.metrics.backoff.set(pause)
        return pause, agent_pause

    def _probe(self, token: int | None) -> None:
        if token is not None:
            gevent.spawn_later(self.backoff.probe_window, self._probe_done, token)

    def _probe_done(self, token: int) -> None:
        if self.backoff.probe_passed(token):
            self._switch_accepted()
            self.wake_dispatcher()

    def _switch_accepted(self, agent_id: int | None = None) -> None:
        started = self.backoff.started_at
        ended = self.backoff.accepted(agent_id)
        if ended:
            log.warning("FreeSWITCH takes new calls again, after %d refusals over %.1fs", ended,
                        time.monotonic() - started if started is not None else 0.0)
            if self.metrics is not None:
                self.metrics.backoff.set(0)

    def _agent_answered(self, watch: LegWatch, answered_at: datetime | None = None) -> None:
        offer = watch.offer
        contact = self.store.contact(offer.contact_id)
        if contact.state != C.OFFERED.value or contact.agent_leg_uuid != offer.agent_leg_uuid:
            log.info("contact %s: agent %s answered but the contact is %s; hanging up the agent",
                     offer.contact_id, offer.agent_name, contact.state)
            self._kill(watch.uuid)
            return
        if not contact.callback_requested:
            live = self.calls.get(offer.contact_id)
            if not self.store.accept_live(offer):
                self._kill(watch.uuid)
                return
            if live is not None:
                live.connected = True
            reply = self._api(f"uuid_bridge {contact.caller_uuid} {watch.uuid}")
            if not reply.startswith("+OK"):
                log.error("contact %s: bridging caller %s to agent %s failed: %s", offer.contact_id,
                          contact.caller_uuid, offer.agent_name, reply.strip())
                self._kill(watch.uuid)
                return
            log.info("contact %s connected to agent %s (live)", offer.contact_id, offer.agent_name)
            if live is not None and live.greenlet is not None:
                live.greenlet.kill(ConnectedToAgent(), block=False)
            return
        if contact.call_delay_sec >= 60:
            # SPEC 2 rule 4: the documented behaviour of the original.
            log.error("contact %s (script %s): CallDelaySec %s is 60 or more; agent %s Refused, contact keeps "
                      "its place", contact.id, contact.script, contact.call_delay_sec, offer.agent_name)
            self.store.refuse_accepted(offer, f"CallDelaySec {contact.call_delay_sec} >= 60")
            watch.answered = False
            self._kill(watch.uuid)
            self.wake_dispatcher()
            return
        due = self.store.accept_callback(offer, contact.call_delay_sec, answered_at)
        if due is None:
            self._kill(watch.uuid)
            return
        plan = self.store.prepare_dial(contact.id, str(uuidlib.uuid4()))
        if plan is None:
            return
        self.plans[contact.id] = plan
        log.info("contact %s accepted by agent %s; dialling %s at %s on leg %s", contact.id, offer.agent_name,
                 contact.callback_number, due.isoformat(), plan.leg_uuid)
        self._schedule_dial(contact.id, due)

    def _schedule_dial(self, contact_id: int, due: datetime) -> None:
        delay = max((due - datetime.now(timezone.utc)).total_seconds(), 0.0)
        old = self.timers.pop(contact_id, None)
        if old is not None:
            old.kill(block=False)
        self.timers[contact_id] = gevent.spawn_later(delay, self._dial, contact_id)
        self.dial_due[contact_id] = due

    def _agent_hung_up(self, watch: LegWatch, cause: str) -> None:
        cid = watch.contact_id
        # The common case first: a conversation ended and the agent is free (with the next offer).
        if self._complete(cid, f"agent hung up ({cause})"):
            return
        contact = self.store.contact(cid)
        state = contact.state
        if contact.agent_leg_uuid != watch.uuid and state != C.CONNECTED.value:
            return
        if state == C.ACCEPTED.value and contact.callback_leg_uuid in self.legs:
            # The originate already went out; 'dialling' is being recorded: treat it as dialling.
            state = C.DIALLING.value
        if state == C.ACCEPTED.value:
            timer = self.timers.pop(cid, None)
            if timer is not None:
                timer.kill(block=False)
            self.dial_due.pop(cid, None)
            self.plans.pop(cid, None)
            if self.store.agent_left_before_dial(cid, f"agent hung up during CallDelaySec ({cause})"):
                self.wake_dispatcher()
        elif state == C.DIALLING.value:
            self._kill(contact.callback_leg_uuid, "ORIGINATOR_CANCEL")
            self.store.dial_failed(cid, contact.callback_leg_uuid, "agent_hangup", 0, self.settings.max_attempts,
                                   counts=False)
            self.wake_dispatcher()

    # -- dialling the customer back -------------------------------------
    def _dial(self, contact_id: int) -> None:
        try:
            self._dial_now(contact_id)
        except SQLAlchemyError as e:
            # A due dial is never dropped: try again shortly (the persisted state decides).
            log.error("contact %s: database unavailable when the dial was due (%s); retrying in 1s", contact_id,
                      type(e).__name__)
            self.timers[contact_id] = gevent.spawn_later(1.0, self._dial, contact_id)

    def _dial_now(self, contact_id: int) -> None:
        """The due time: send the originate first (the attempt was stored at acceptance), then record."""
        self.timers.pop(contact_id, None)
        plan = self.plans.pop(contact_id, None) or self.store.prepared_plan(contact_id)
        if plan is None:
            return
        while self.ports_in_use >= self.settings.ports:
            log.info("contact %s: all %d ports busy; the callback waits for one", contact_id, self.settings.ports)
            self._port_freed.clear()
            self._port_freed.wait(timeout=1.0)
        leg = plan.leg_uuid
        self.ports_in_use += 1
        watch = self._watch(LegWatch(leg, "callback", contact_id, plan=plan, holds_port=True))
        try:
            dial = commands.dial_for(self.settings.dial_template, plan.number)
            cmd = commands.originate(leg, dial, {
                "origination_caller_id_number": plan.caller_id, "origination_caller_id_name": plan.caller_id,
                "esl_cb_contact_id": contact_id, "esl_cb_role": "callback", "esl_cb_attempt": plan.attempt_no,
                "originate_timeout": self.settings.callback_ring_timeout, "ignore_early_media": "true"})
            job = str(uuidlib.uuid4())
            self.jobs[job] = leg
            self.pacer.wait(urgent=True)          # due now: never behind offers to agents
            self._observe_lateness(contact_id)
            self.esl.bgapi(cmd, job_uuid=job)
            self._probe(self.backoff.sent())
        except (ESLError, commands.UnsafeDialString, AttributeError) as e:
            log.error("contact %s: dial failed before reaching the switch: %s", contact_id, e)
            self._release_port(watch)
            self.legs.pop(leg, None)
            self.store.dial_failed(contact_id, leg, "switch_error", self.settings.retry_interval,
                                   self.settings.max_attempts)
            self._kill(plan.agent_leg_uuid)
            self.wake_dispatcher()
            return
        log.info("contact %s attempt %d: dialling %s as %s on leg %s", contact_id, plan.attempt_no, plan.number,
                 plan.caller_id, leg)
        self.store.mark_dialling(plan)

    def _observe_lateness(self, contact_id: int) -> None:
        due = self.dial_due.pop(contact_id, None)
        if due is not None and self.metrics is not None:
            self.metrics.dial_late.observe(max((datetime.now(timezone.utc) - due).total_seconds(), 0.0))

    def _count_dial(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.dials.labels(result).inc()

    def _release_port(self, watch: LegWatch) -> None:
        if not watch.holds_port:
            return
        watch.holds_port = False
        self.ports_in_use -= 1
        self._port_freed.set()

    def _callback_event(self, watch: LegWatch, ev: Event) -> bool:
        plan = watch.plan
        name = ev.name
        if name == "BACKGROUND_JOB":
            cause = _job_failed(watch, ev)
            if not _switch_side(cause, self.switch_stopping):
                self._switch_accepted()
            if cause is not None:
                self._dial_failed(watch, cause)
                if cause in NO_CHANNEL_CAUSES:
                    self._release_port(watch)
                    return True
            return watch.hangup_done
        if name == "CHANNEL_ANSWER":
            if watch.answered:          # a resync after a reconnect may repeat the answer
                return False
            watch.answered = True
            if not self.store.dial_answered(plan.contact_id, watch.uuid):
                self._kill(watch.uuid)
                return False
            reply = self._api(f"uuid_bridge {plan.agent_leg_uuid} {watch.uuid}")
            if not reply.startswith("+OK"):
                log.warning("contact %s: the agent left before the customer answered (%s); back to the queue",
                            plan.contact_id, reply.strip())
                watch.answered = False            # its hangup is not the end of a conversation
                self.store.bridge_failed(plan.contact_id, watch.uuid, "agent gone before the bridge")
                self._kill(watch.uuid)
                self.wake_dispatcher()
            else:
                log.info("contact %s: customer answered and is connected to the agent", plan.contact_id)
                self._count_dial("answered")
            return False
        if name == "CHANNEL_HANGUP":
            if watch.answered:
                self._complete(plan.contact_id, f"customer hung up ({ev.get('Hangup-Cause')})")
            return False
        if name == "CHANNEL_HANGUP_COMPLETE":
            self.store.leg_ended(watch.uuid, ev.get("Hangup-Cause"), _int(ev.variable("billsec")), watch.answered)
            self._release_port(watch)
            watch.hangup_done = True
            return watch.job_done
        return False

    def _dial_failed(self, watch: LegWatch, cause: str) -> None:
        plan = watch.plan
        switch_side = _switch_side(cause, self.switch_stopping)
        if switch_side:
            # Not the customer's doing (the switch is full or shutting down): not counted, tried again
            # when it has room.
            result = "interrupted" if cause == "SYSTEM_SHUTDOWN" or self.switch_stopping else "switch_busy"
            self._count_dial(result)
            pause, _ = self._switch_refused(cause)
            self.store.dial_failed(plan.contact_id, watch.uuid, result, max(pause, 1.0), self.settings.max_attempts,
                                   counts=False)
            log.info("contact %s attempt %d: %s (%s); not counted, will retry", plan.contact_id, plan.attempt_no,
                     result, cause)
        else:
            result = RESULT_OF_CAUSE.get(cause, "failed")
            self._count_dial(result)
            outcome = self.store.dial_failed(plan.contact_id, watch.uuid, result, self.settings.retry_interval,
                                             self.settings.max_attempts)
            log.info("contact %s attempt %d: %s (%s)%s", plan.contact_id, plan.attempt_no, result, cause,
                     "; callback failed" if outcome is Outcome.CALLBACK_FAILED else "; will retry")
        self._kill(plan.agent_leg_uuid)       # the agent waited on the line: release them
        self.wake_dispatcher()

    # -- live callers (outbound socket) ---------------------------------
    def _on_call(self, channel: CallChannel) -> None:
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
        self._watch(LegWatch(channel.uuid, "caller", contact_id))

        def gone() -> None:
            if not live.expect_hangup and not live.connected and live.greenlet is not None:
                live.greenlet.kill(CallerGone(), block=False)
        channel.on_gone = gone
        if self.observer is not None:
            observer = self.observer
            channel.observer = lambda name, app: observer("caller-socket", name, app)
        runner = ScriptRunner(self.script, ChannelCall(live, self.missing_prompts), StoreQueue(self, contact_id), variables,
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
                    self._after_script(live, contact_id, ended_by, in_callback)
                    break
                except (CallerGone, ConnectedToAgent):
                    continue          # a kill sent just before we cleared the greenlet: redo (guarded)
        finally:
            self.calls.pop(contact_id, None)

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

    def _create_contact(self, channel: CallChannel, ani: str, dnis: str) -> tuple[int, int | None] | None:
        """Store the new contact, and find a callback of this caller still waiting (the script may
        branch on it). While the database is away the caller hears music, for a while."""
        try:
            number = normalize(ani, self.settings.region)
        except InvalidNumber:
            number = None
        deadline = time.time() + self.settings.db_wait
        music = False
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
                    music = True
                    gevent.spawn(self._hold_music, channel)
                gevent.sleep(1.0)
        if music:
            try:
                channel.break_media()
            except Exception:
                pass
        return arrival

    @staticmethod
    def _hold_music(channel: CallChannel) -> None:
        try:
            channel.execute("playback", "local_stream://moh")
        except Exception:
            pass

    def _script_ended(self, contact_id: int, ended_by: str, in_callback: bool) -> None:
        if in_callback:
            return
        reason = "caller hung up" if ended_by == "caller" else "script ended"
        try:
            if self.store.end_contact(contact_id, [C.ARRIVED], Outcome.NOT_QUEUED, reason):
                return
            if self.store.end_contact(contact_id, [C.QUEUED], Outcome.ABANDONED, reason):
                return
            agent_id = self.store.abandon_offer(contact_id, reason)
            if agent_id is not None:
                contact = self.store.contact(contact_id)
                self._kill(contact.agent_leg_uuid)
                self.wake_dispatcher()
        except SQLAlchemyError as e:
            log.error("contact %s: could not record the end of the call (%s); reconcile will", contact_id, e)

    def _caller_event(self, watch: LegWatch, ev: Event) -> bool:
        if ev.name == "CHANNEL_HANGUP":
            contact = self.store.contact(watch.contact_id)
            if contact.state == C.CONNECTED.value and not contact.callback_requested:
                self._complete(watch.contact_id, f"caller hung up ({ev.get('Hangup-Cause')})")
        if ev.name == "CHANNEL_HANGUP_COMPLETE":
            self.store.leg_ended(watch.uuid, ev.get("Hangup-Cause"), _int(ev.variable("billsec")), True)
            return True
        return False

    # -- start-up reconciliation ----------------------------------------
    def reconcile(self) -> None:
        """Rebuild from the database and FreeSWITCH: nothing stuck, nothing dialled twice.

        Runs at every (re)connection and after taking over a dead controller's contacts. Only
        this controller's contacts are examined; the origination uuids we stored decide
        whether a leg exists, so a dial is never sent twice. `show channels` gives one snapshot
        of every leg but lags the live calls by ~200 ms (esl-captures 13): it only spares us
        questions, and every decision about a leg asks that leg (uuid_dump)."""
        view = SwitchView(self._api)
        self._resync_watched(view)
        watched_before = set(self.legs)
        self._reconcile_contacts(view)
        # A leg that ended between our look and its watch being attached sent its events to
        # nobody: a second look, leg by leg, catches it (handlers are guarded, a duplicate is harmless).
        fresh = {u: w for u, w in self.legs.items() if u not in watched_before}
        if fresh:
            self._resync_watched(SwitchView(self._api, snapshot=False), only=fresh)

    def _reconcile_contacts(self, view: "SwitchView") -> None:
        exists = view.exists
        for c in self.store.contacts_in([C.ARRIVED, C.QUEUED], mine=True):
            if c.id not in self.calls and not exists(c.caller_uuid):
                self.store.end_contact(c.id, [C(c.state)], Outcome.ABANDONED if c.state == C.QUEUED.value
                                       else Outcome.NOT_QUEUED, "caller gone while the controller was away")
        for c in self.store.contacts_in([C.OFFERED], mine=True):
            if c.agent_leg_uuid not in self.legs:
                self._give_back_offer(c, exists, "offer interrupted by a restart")
        for c in self.store.contacts_in([C.ACCEPTED], mine=True):
            if c.id in self.timers or c.agent_leg_uuid in self.legs:
                continue
            due = as_utc(c.dial_due_at)
            if c.callback_leg_uuid and due <= datetime.now(timezone.utc):
                # Due before the crash: the originate may have gone out. Its uuid decides.
                if exists(c.callback_leg_uuid) and exists(c.agent_leg_uuid):
                    plan = self.store.prepared_plan(c.id)
                    if plan and self.store.mark_dialling(plan):
                        self._reattach_callback(self.store.contact(c.id), view)
                        continue
                self._kill(c.callback_leg_uuid)
                self._kill(c.agent_leg_uuid)
                self.store.dial_failed(c.id, c.callback_leg_uuid, "interrupted", 0, self.settings.max_attempts,
                                       counts=False)
                continue
            if exists(c.agent_leg_uuid):
                self._watch(LegWatch(c.agent_leg_uuid, "agent", c.id, offer=self._offer_of(c), answered=True,
                                     job_done=True))
                if not c.callback_leg_uuid:
                    plan = self.store.prepare_dial(c.id, str(uuidlib.uuid4()))
                    if plan is not None:
                        self.plans[c.id] = plan
                self._schedule_dial(c.id, due)          # resumes from the persisted due time
            else:
                self.store.agent_left_before_dial(c.id, "agent leg gone while the controller was away")
        for c in self.store.contacts_in([C.DIALLING], mine=True):
            if c.callback_leg_uuid in self.legs:
                continue
            if exists(c.callback_leg_uuid) and exists(c.agent_leg_uuid):
                self._reattach_callback(c, view)
            else:
                # Persisted as 'about to originate' but the leg is not there: it never rang, or it
                # is over. Either way it is not redialled here: the contact goes back to the queue.
                self._kill(c.callback_leg_uuid)
                self._kill(c.agent_leg_uuid)
                self.store.dial_failed(c.id, c.callback_leg_uuid, "interrupted", 0, self.settings.max_attempts,
                                       counts=False)
        for c in self.store.contacts_in([C.CONNECTED], mine=True):
            legs = [u for u in (c.caller_uuid, c.agent_leg_uuid, c.callback_leg_uuid) if u]
            if any(u in self.legs for u in legs):
                continue
            alive = [u for u in legs if exists(u)]
            if len(alive) < 2:
                for u in alive:
                    self._kill(u)
                self.store.complete(c.id, "ended while the controller was away")   # the dispatcher offers next
            elif c.callback_requested:
                self._reattach_callback(c, view)
            else:
                self._watch(LegWatch(c.caller_uuid, "caller", c.id))
                self._watch(LegWatch(c.agent_leg_uuid, "agent", c.id, offer=self._offer_of(c), answered=True,
                                     job_done=True))

    @staticmethod
    def _offer_of(c) -> Offer:
        return Offer(c.id, c.agent_id, "", "", c.agent_leg_uuid, bool(c.callback_requested), c.caller_uuid,
                     c.callback_number or c.original_ani or "", "")

    def _reattach_callback(self, c, view: "SwitchView") -> None:
        """Watch a callback's two legs again. A customer who answered while we were away is bridged at
        once: the answer goes through the same handler as a live CHANNEL_ANSWER would (stored, then
        bridged); legs stored as connected but not bridged (a crash between the two) are bridged."""
        plan = DialPlan(c.id, c.agent_id, c.agent_leg_uuid, c.callback_number, c.callback_caller_id, c.attempts,
                        c.callback_leg_uuid)
        leg = view.live(c.callback_leg_uuid)
        answered = leg is not None and leg.answered
        connected = c.state == C.CONNECTED.value
        self.ports_in_use += 1
        watch = self._watch(LegWatch(c.callback_leg_uuid, "callback", c.id, plan=plan, answered=connected,
                                     job_done=True, holds_port=True))
        self._watch(LegWatch(c.agent_leg_uuid, "agent", c.id, offer=self._offer_of(c), answered=True,
                             job_done=True))
        if connected:
            if leg is not None and leg.bridged_to != c.agent_leg_uuid:
                log.warning("contact %s: connected but its legs are not bridged; bridging them", c.id)
                self._api(f"uuid_bridge {c.agent_leg_uuid} {c.callback_leg_uuid}")
        elif answered:
            log.warning("contact %s: the customer answered leg %s while we were away; connecting them now",
                        c.id, c.callback_leg_uuid)
            self._deliver(watch, _event("CHANNEL_ANSWER", c.callback_leg_uuid))
        else:
            log.info("contact %s: re-attached to the ringing callback leg %s", c.id, c.callback_leg_uuid)

    def _resync_watched(self, view: "SwitchView", only: dict[str, LegWatch] | None = None) -> None:
        """Events lost while the connection was down: tell each watched leg what happened meanwhile."""
        for watch in list((only or self.legs).values()):
            if watch.kind == "caller":
                # A caller's own socket reports its hangup; only a leg the switch no longer has needs help.
                leg = None if not view.exists(watch.uuid) else LegState(True, True, "")
            else:
                leg = view.live(watch.uuid)
            synthetic = []
            if leg is not None:
                if watch.kind != "caller" and not watch.answered and leg.answered:
                    self._deliver(watch, _event("CHANNEL_ANSWER", watch.uuid))
                continue
            if watch.kind != "caller" and not watch.answered and not watch.job_done:
                synthetic.append(_event("BACKGROUND_JOB", watch.uuid, body=b"-ERR DESTINATION_OUT_OF_ORDER\n"))
            synthetic += [_event("CHANNEL_HANGUP", watch.uuid), _event("CHANNEL_HANGUP_COMPLETE", watch.uuid)]
            log.warning("contact %s: leg %s ended while we were disconnected", watch.contact_id, watch.uuid)
            for ev in synthetic:
                self._deliver(watch, ev)


@dataclass(frozen=True)
class LegState:
    exists: bool
    answered: bool
    bridged_to: str


class SwitchView:
    """What FreeSWITCH has now, as reconciliation needs it.

    `show channels` (one call) lags the live calls by ~200 ms (esl-captures 13): a leg that just
    answered still reads RINGING, one just created is missing. So it only answers "yes, it exists";
    a leg it does not list, and the state of any leg, are asked of the leg itself (uuid_dump)."""

    def __init__(self, api: Callable[[str], str], snapshot: bool = True) -> None:
        self._api = api
        self._listed: set[str] = self._show_channels() if snapshot else set()

    def _show_channels(self) -> set[str]:
        body = self._api("show channels as json")
        try:
            data = json.loads(body)
        except ValueError:
            raise ESLError(f"'show channels as json' did not return JSON: {body[:80]!r}") from None
        return {row["uuid"] for row in data.get("rows", [])}

    def live(self, uuid: str | None) -> LegState | None:
        """The leg's live state; None when the switch has no such leg."""
        if not uuid:
            return None
        body = self._api(f"uuid_dump {uuid} json")
        if body.startswith("-ERR No such channel"):
            return None
        if body.startswith("-"):
            raise ESLError(f"'uuid_dump {uuid} json' failed: {body.strip()[:80]}")
        try:
            dump = json.loads(body)
        except ValueError:
            raise ESLError(f"'uuid_dump {uuid} json' did not return JSON: {body[:80]!r}") from None
        return LegState(True, dump.get("Answer-State") == "answered", dump.get("Other-Leg-Unique-ID", ""))

    def exists(self, uuid: str | None) -> bool:
        return bool(uuid) and (uuid in self._listed or self.live(uuid) is not None)


def _switch_side(cause: str | None, stopping: bool) -> bool:
    return cause in SWITCH_LIMIT_CAUSES or (stopping and cause in SHUTDOWN_CAUSES)


def _job_failed(watch: LegWatch, ev: Event) -> str | None:
    """Note the originate's result; the cause when it failed before the leg answered."""
    watch.job_done = True
    result = ev.body.decode(errors="replace").strip()
    if result.startswith("-ERR") and not watch.answered:
        return result[4:].strip() or "UNKNOWN"
    return None


def _answered_at(ev: Event) -> datetime | None:
    """When the agent picked up, by the switch's clock: CallDelaySec counts from there, not from when
    the event reached us (delivery lags 2-21 ms, more under load). Implausible values are ignored."""
    try:
        us = int(ev.get("Caller-Channel-Answered-Time") or 0)
    except ValueError:
        return None
    if not us:
        return None
    at = datetime.fromtimestamp(us / 1_000_000, timezone.utc)
    lag = (datetime.now(timezone.utc) - at).total_seconds()
    return at if 0 <= lag < 2.0 else None


def _event(name: str, uuid: str, body: bytes = b"") -> Event:
    return Event.from_headers([("Event-Name", name), ("Unique-ID", uuid), ("Hangup-Cause", "LOST_EVENTS")], body)


def _int(text: str) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None
