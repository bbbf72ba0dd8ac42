"""The controller: wires FreeSWITCH, the store and the script into the collaborators that run a
callback's life, and owns their greenlets. ARCHITECTURE.md follows a callback file by file:

  callers.py     a caller arrives; the script runs (Reqagent queues, Callback stores and hangs up)
  dispatcher.py  a waiting contact meets a free agent; the agent's phone rings and is answered
  dialler.py     CallDelaySec, the customer's dial, their answer and the bridge; retries
  recovery.py    after a restart, a reconnection or a takeover: nothing stuck, nobody dialled twice
  legs.py        routes each leg's events to the one worker that owns the leg
  switch.py      the ESL connection kept up; how the switch is doing (full, shutting down)

Every step is stored (guarded by the expected state) before it is acted on.
"""
from __future__ import annotations

import logging
import select
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Callable

import gevent
from gevent.event import Event as GEvent
from gevent.pool import Group
from sqlalchemy.exc import SQLAlchemyError

from esl_cb.config import Settings
from esl_cb.db.store import Store
from esl_cb.domain import script as scripts
from esl_cb.esl.inbound import ESLError
from esl_cb.esl.outbound import CallServer
from esl_cb.esl.prompts import check_prompts
from esl_cb.netaddr import parse_hostport

from .admission import Admission
from .agent_timers import HoldTimers
from .callers import CallerSessions
from .dialler import Dialler
from .dispatcher import Dispatcher
from .features import FeatureCalls
from .fleet import SwitchShareKeeper
from .guard import CallbackGuard
from .legs import LegRegistry, quiet
from .membership import Membership
from .pacing import OriginatePacer
from .phones import PhoneWatch
from .presence import CHANNEL as EVENTS_CHANNEL
from .presence import Presence
from .recovery import Recovery
from .supervision import Supervisor
from .switch import StoredHangups, SwitchHealth, SwitchLink
from .wakeups import WakeRouter

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, settings: Settings, store: Store | None = None, script: scripts.Script | None = None) -> None:
        self.settings = settings
        self.store = store or Store(settings.db, settings.controller_id)
        self.script = script or scripts.load(settings.script or scripts.DEFAULT_SCRIPT)
        self.legs = LegRegistry()
        self.admission = Admission(settings.admission_max_lag, settings.admission_max_wait)
        self.switch = SwitchLink(settings, self.legs.route)
        self.health = SwitchHealth()
        pacer = OriginatePacer(settings.originate_rate)      # under the switch's sessions-per-second
        wake = self.wake_dispatcher
        self.callers = CallerSessions(settings, self.store, self.script, self.legs, self.switch, wake)
        self.callers.features = FeatureCalls(self.store)
        self.dialler = Dialler(settings, self.store, self.switch, self.legs, pacer, self.health, wake)
        self.dispatcher = Dispatcher(settings, self.store, self.switch, self.legs, pacer, self.health,
                                     self.callers, self.dialler)
        self.guard = CallbackGuard(settings.policy(), self.store)
        self.hold_timers = HoldTimers(self.store, wake)       # wrap-ups and delays end on time
        self.membership = Membership(self.store, settings.esl, settings.heartbeat_timeout)
        self.membership.on_fenced = self._start_over
        self.fleet = SwitchShareKeeper(settings, self.store, pacer, self.dialler, self.dispatcher)
        self.wakeups = WakeRouter(self.store.controller_id, lambda at: self.dispatcher.wake(notified_at=at),
                                  settings.notify_others_after)
        self.dialler.may_act = self.dispatcher.may_act = self.membership.may_act
        self.callers.guard = self.dialler.guard = self.guard
        self.recovery = Recovery(settings, self.store, self.switch, self.legs, self.callers, self.dispatcher,
                                 self.dialler)
        self.switch.owed = StoredHangups(self.store, settings.esl)
        self.phones = PhoneWatch(self.store, settings.esl, self.switch.api, self.wake_dispatcher)
        self.switch.on_custom = self.phones.on_event
        self.presence = Presence(self.switch.sendevent, lambda: self.phones.domain)
        self.switch.on_connected = self._on_connected
        self.switch.on_ready = self.wake_dispatcher
        self.server: CallServer | None = None
        self._metrics = None
        self._prompts_checked = False
        # Short-lived errands (a reconcile after a failed step, the prompt check): killed by stop() so a
        # stopped controller touches neither the switch nor the database.
        self._errands = Group()
        self._running = False
        self.supervisor = Supervisor()
        self.supervisor.on_restart = self._greenlet_restarted
        self.supervisor.on_fatal = self._fatal
        self.failed = GEvent()           # a supervised greenlet could not be kept alive: the process should end
        self.stopped = GEvent()
        self.step_failures: Counter[str] = Counter()      # handlers that failed half way, by leg kind
        self.legs.on_failure = self._step_failed
        self.legs.database_away = lambda: quiet(self.store, logging.ERROR) == logging.DEBUG

    # -- life cycle -----------------------------------------------------
    def start(self) -> "Controller":
        self._running = True
        host, port = parse_hostport(self.settings.listen)
        self.server = CallServer(host, port, self.callers.on_call, allowed=self.settings.allowed_networks(),
                                 on_refused=self._connection_refused, admit=self.admission.admit)
        self.server.bind()          # a port in use fails here, in the caller, not in a greenlet
        spawn = self.supervisor.spawn
        spawn("outbound-socket server", self.server.listen, restart=False)
        if not self.server.ready.wait(5):
            raise RuntimeError("outbound-socket server did not start")
        spawn("esl", self.switch.run)
        self.admission.start()
        spawn("dispatcher", self.dispatcher.run)
        spawn("heartbeat", self._heartbeat_loop)
        spawn("calendar", self._calendar_loop)
        if self.store.engine.dialect.name == "postgresql":
            spawn("listen", self._listen_for_wakeups)
        log.info("controller %s started: %s", self.settings.controller_id, self.settings.masked())
        for warning in self.settings.security_warnings():
            log.warning("%s", warning)
        return self

    def stop(self) -> None:
        """Stop at once (what is stored stays for the next start or another controller)."""
        self._running = False
        self.supervisor.stop()
        self.admission.stop()
        if self._metrics is not None:
            self._metrics.stop()
        if self.server is not None:
            self.server.stop()
        self.dispatcher.stop()
        self.hold_timers.stop()
        self.switch.close()
        self.dialler.stop()
        self.callers.stop()
        self.legs.stop()
        self.phones.stop()
        self.presence.stop()
        self.wakeups.stop()
        self._errands.kill(block=False)
        self.stopped.set()

    def shutdown(self, grace: float) -> None:
        """SIGTERM: take no new callers and make no new offers; let what is in flight finish (a dial
        due within `grace`, an originate on its way, a bridge being made, the events being handled),
        at most `grace` seconds; then stop. What is still open (a later due time, a ringing customer,
        a conversation) stays stored and bridged on the switch: this controller's next start, or
        another controller after the heartbeat timeout, picks it up. Calls on the switch are never
        cut by a stop."""
        deadline = time.monotonic() + grace
        log.info("stopping: no new calls or offers; waiting up to %.0fs for the work in flight", grace)
        self.supervisor.retire("outbound-socket server")
        self.supervisor.retire("dispatcher")
        if self.server is not None:
            self.server.stop()
        self.dispatcher.stop()
        while time.monotonic() < deadline and self._in_flight(deadline):
            gevent.sleep(0.05)
        left = self._in_flight(deadline)
        if left:
            log.warning("stopping with work in flight after %.0fs: %s", grace, left)
        self.stop()
        log.info("stopped")

    def _in_flight(self, deadline: float) -> str:
        """What a clean stop waits for (empty: nothing)."""
        now = datetime.now(timezone.utc)
        soon = [cid for cid, due in self.dialler.due.items()
                if (due - now).total_seconds() <= deadline - time.monotonic()]
        parts = [f"{len(soon)} dial(s) due" if soon else "",
                 f"{len(self.dialler.sending)} originate(s) on their way" if self.dialler.sending else "",
                 f"{len(self.legs.lanes)} contact(s) with events being handled" if self.legs.lanes else ""]
        return ", ".join(p for p in parts if p)

    def _greenlet_restarted(self, name: str) -> None:
        if self._metrics is not None:
            self._metrics.greenlet_restarts.labels(name).inc()

    def _fatal(self, name: str) -> None:
        self.failed.set()

    def _step_failed(self, watch, event: str, error: Exception) -> None:
        """A leg's handler failed half way with something other than the database: count it, and look
        at that contact again as a whole as soon as the switch answers."""
        self.step_failures[watch.kind] += 1
        if self._metrics is not None:
            self._metrics.step_failures.labels(watch.kind, event).inc()

        def again() -> None:
            self.switch.ready.wait()
            for pause in (0.2, 1.0, 5.0):
                gevent.sleep(pause)
                try:
                    self.recovery.reconcile_contact(watch.contact_id)
                    return
                except (ESLError, SQLAlchemyError) as e:
                    log.warning("contact %s: reconciling after a failed step failed (%s); trying again",
                                watch.contact_id, e)
            log.error("contact %s: could not be reconciled after a failed step; the next reconnection will",
                      watch.contact_id)
        self._errands.spawn(again)

    def _connection_refused(self, host: str) -> None:
        if self._metrics is not None:
            self._metrics.refused_connections.inc()

    def greenlet(self, name: str) -> gevent.Greenlet:
        """One of the controller's long-lived greenlets (tests check they survive hostile input)."""
        return self.supervisor.greenlets[name]

    @property
    def listen_port(self) -> int:
        return self.server.bound_port if self.server else 0

    def wake_dispatcher(self) -> None:
        self.dispatcher.wake()

    def reconcile(self) -> None:
        self.recovery.reconcile()

    def _on_connected(self) -> None:
        self.recovery.reconcile()
        try:
            self.phones.check_all()          # events may have been missed while we were away
        except (ESLError, SQLAlchemyError) as e:
            log.warning("could not ask FreeSWITCH for the agents' phones (%s); events will tell", e)
        self.presence.resync(self.store.agents)       # a restarted switch knows no lamp: every one again
        if not self._prompts_checked:
            self._prompts_checked = True
            self._errands.spawn(self.check_prompts)

    def check_prompts(self) -> list:
        """Name, at start, every prompt and stream of the script that the switch cannot play (a caller
        would otherwise find out: a menu whose prompt is missing never hears its key)."""
        prompts = scripts.script_prompts(self.script)
        try:
            problems = check_prompts(self.switch.api, prompts)
        except ESLError as e:
            log.warning("could not check the script's prompts on FreeSWITCH: %s", e)
            return []
        for p in problems:
            if p.missing:
                log.error("script %s: %s; install it on the switch or change the script", self.script.file, p)
            elif p.at_run_time:
                log.info("script %s: %s", self.script.file, p)
            else:
                log.warning("script %s: %s", self.script.file, p)
        if not problems:
            log.info("script %s: all %d prompts are on the switch", self.script.file, len(prompts))
        return problems

    # -- what tests, metrics and the CLI look at --------------------------------
    @property
    def metrics(self):
        return self._metrics

    @metrics.setter
    def metrics(self, metrics) -> None:
        self._metrics = self.switch.metrics = self.health.metrics = self.dialler.metrics = self.guard.metrics = metrics
        self.admission.metrics = metrics

    @property
    def observer(self) -> Callable[[str, str, str], None] | None:
        return self.legs.observer

    @observer.setter
    def observer(self, fn: Callable[[str, str, str], None] | None) -> None:
        self.legs.observer = fn

    @property
    def esl(self):
        return self.switch.conn

    @property
    def esl_ready(self):
        return self.switch.ready

    @property
    def reconnects(self) -> int:
        return self.switch.reconnects

    @property
    def ports_in_use(self) -> int:
        return self.dialler.voice_ports_in_use

    @property
    def backoff(self):
        return self.health.backoff

    @property
    def missing_prompts(self):
        return self.callers.missing_prompts

    # -- the database: heartbeats and wake-ups --------------------------------
    def _heartbeat_loop(self) -> None:
        """Say we are alive (membership.py: taken over while stalled, we start over); take over the
        contacts of controllers that stopped saying so."""
        while self._running:
            try:
                self.membership.beat()
                self.fleet.refresh(self.switch.ready.is_set())
                if self.settings.notify_others_after > 0:
                    self.wakeups.set_members(self.store.offering_controllers(self.settings.heartbeat_timeout))
                    self.wakeups.set_reach(self.store.phone_reach())
                if self.switch.ready.is_set():
                    self.switch.pay_owed()       # hang-ups another controller of this switch could not make
                if self.store.adopt_dead(self.settings.heartbeat_timeout, self.settings.esl) and \
                        self.switch.ready.is_set():
                    self.recovery.reconcile()
                    self.wake_dispatcher()
            except SQLAlchemyError as e:
                log.log(quiet(self.store, logging.WARNING), "heartbeat: database unavailable (%s)", type(e).__name__)
            except ESLError as e:
                log.warning("heartbeat: reconcile after a takeover failed (%s); retrying", e)
            gevent.sleep(self.settings.heartbeat_interval)

    def _start_over(self) -> None:
        """Another controller took over what we held while we were stalled: forget it all, without
        touching the switch or the store (its legs and contacts are the other's now). Callers whose
        scripts run here go on (their moves are refused where the contact is no longer ours)."""
        self.dialler.drop_all()
        self.dispatcher.drop_pending()
        for uuid, watch in list(self.legs.legs.items()):
            if watch.kind != "caller":
                watch.finished = True
                self.legs.forget(uuid)
        self.legs.jobs.clear()

        def rejoined() -> None:
            if self.switch.ready.is_set():
                try:
                    self.recovery.reconcile()
                except (ESLError, SQLAlchemyError) as e:
                    log.warning("reconciling after starting over failed (%s); the next reconnection will", e)
            self.wake_dispatcher()
        self._errands.spawn(rejoined)

    def _calendar_loop(self) -> None:
        """Open and close each skill's callbacks by its hours (the claim reads the flag), and end the
        callbacks that expired. Every controller does it; the writes are idempotent."""
        while self._running:
            try:
                self.calendar_tick()
            except SQLAlchemyError as e:
                log.log(quiet(self.store, logging.WARNING), "calendar: database unavailable (%s)", type(e).__name__)
            except ESLError as e:
                log.warning("calendar: FreeSWITCH did not answer (%s)", e)
            gevent.sleep(max(self.settings.poll_interval, 0.2))

    def calendar_tick(self) -> None:
        now = datetime.now(timezone.utc)
        for skill_id, name, hours, stored in self.store.skill_calendars():
            is_open = hours.is_open(now)
            if is_open != stored:
                self.store.set_callbacks_open(skill_id, is_open)
                log.info("skill %s: callbacks %s (%s)", name, "open" if is_open else "closed", hours.describe())
                if is_open:
                    self.wake_dispatcher()
        self.store.expire_callbacks()

    def _listen_for_wakeups(self) -> None:
        """LISTEN for NOTIFY from the CLI and other controllers; polling stays the backstop."""
        while self._running:
            try:
                raw = self.store.engine.raw_connection()
                try:
                    dbapi = raw.driver_connection
                    dbapi.autocommit = True
                    with dbapi.cursor() as cur:
                        cur.execute(f"LISTEN {Store.NOTIFY_CHANNEL}")
                        cur.execute(f"LISTEN {EVENTS_CHANNEL}")        # agents' changes: BLF presence
                    while self._running:
                        ready, _, _ = select.select([dbapi], [], [], 5.0)
                        if ready:
                            arrived = time.time()
                            dbapi.poll()
                            if dbapi.notifies:
                                notes = list(dbapi.notifies)
                                dbapi.notifies.clear()
                                for n in notes:
                                    if n.channel == EVENTS_CHANNEL:
                                        self.presence.on_notify(n.payload)
                                wakes = [n.payload for n in notes if n.channel != EVENTS_CHANNEL]
                                if wakes:
                                    self.wakeups.on_notify(wakes, arrived)
                finally:
                    raw.invalidate()
            except Exception as e:      # database restarting: polling covers us meanwhile
                log.log(quiet(self.store, logging.WARNING), "LISTEN for wake-ups failed (%s); retrying",
                        type(e).__name__)
                gevent.sleep(1.0)
