"""Our side of FreeSWITCH: the inbound ESL connection kept up, commands that never hang, and how
the switch is doing (refusing calls, shutting down).

The connection carries every originate, bridge and kill, and the events of the legs we placed. It
is reconnected with a growing pause; on each connection `on_connected` runs (recovery) before
anyone may offer again (`ready`).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import gevent
from gevent.event import Event as GEvent

from esl_cb.config import Settings
from esl_cb.esl.inbound import ESLError, Event, InboundConnection, NotSent
from esl_cb.netaddr import parse_hostport

from .pacing import SwitchBackoff

log = logging.getLogger(__name__)

# Only what the handlers act on: every event subscribed costs the reader time during bursts.
# (Not CHANNEL_BRIDGE: nothing needs it, and the real switch does not send it for a bridge made while
# the customer's originate is still finishing, which is when ours are made.)
EVENTS = ["CHANNEL_ANSWER", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "BACKGROUND_JOB", "SHUTDOWN",
          "DTMF",             # DTMF: a customer confirming a callback (issue 14)
          # agents' phones registering and leaving (issue 20; controller/phones.py): CUSTOM, then subclasses
          "CUSTOM", "sofia::register", "sofia::unregister", "sofia::expire"]
# Causes that say the switch (not the person) could not place the call: back off, try again, count
# nothing against the agent or the customer. A switch shutting down hangs up with SYSTEM_SHUTDOWN.
SWITCH_LIMIT_CAUSES = {"DESTINATION_OUT_OF_ORDER", "NORMAL_CIRCUIT_CONGESTION", "SWITCH_CONGESTION",
                       "SYSTEM_SHUTDOWN"}
# ...and, while it shuts down, originates fail with these as its modules unload (measured).
SHUTDOWN_CAUSES = {"CHAN_NOT_IMPLEMENTED", "INVALID_PROFILE"}
# Originate failures where FreeSWITCH never created a channel, so no hangup events follow.
NO_CHANNEL_CAUSES = {"CHAN_NOT_IMPLEMENTED", "INVALID_PROFILE", "USER_NOT_REGISTERED", "DESTINATION_OUT_OF_ORDER"}


class HangupLedger(Protocol):
    """Where the legs owed a hang-up are kept across restarts (the database: legs_to_hang_up)."""

    def owe(self, uuid: str, cause: str) -> None: ...

    def owed(self) -> dict[str, str]: ...

    def paid(self, uuid: str) -> None: ...


class StoredHangups:
    """The ledger in the database, for one switch (its identity, as the fleet names it)."""

    def __init__(self, store, switch: str) -> None:
        self.store = store
        self.switch = switch

    def owe(self, uuid: str, cause: str) -> None:
        self.store.owe_hangup(self.switch, uuid, cause)

    def owed(self) -> dict[str, str]:
        return self.store.hangups_owed(self.switch)

    def paid(self, uuid: str) -> None:
        self.store.hangup_paid(uuid)


@dataclass(frozen=True)
class LegState:
    """A leg as the switch has it now (uuid_dump reads the live session; `show channels` lags)."""

    answered: bool
    bridged_to: str


class SwitchLink:
    def __init__(self, settings: Settings, route: Callable[[Event], None]) -> None:
        self.settings = settings
        self._route = route                       # events of our legs go there
        self.on_connected: Callable[[], None] = lambda: None     # recovery, before offers may go out
        self.on_ready: Callable[[], None] = lambda: None         # then: wake the dispatcher
        self.on_custom: Callable[[Event], None] = lambda ev: None    # phones registering (never blocks)
        self.conn: InboundConnection | None = None
        self.ready = GEvent()                     # connected and reconciled: offers may go out
        self.stopping = False                     # FreeSWITCH announced its shutdown
        self.reconnects = 0
        self.metrics = None
        self._running = False
        self.lost_at: float | None = time.monotonic()    # since when we cannot reach it (None: connected)
        # Legs we meant to hang up while the switch could not be reached (the ESL cut, the switch
        # alive): hung up as soon as it answers again, before recovery looks (README 'A switch lost').
        # Stored too (`owed`, when the controller gives one), so a restart in between forgets none.
        self.kill_when_back: dict[str, str] = {}
        self.owed: HangupLedger | None = None

    # -- the connection -----------------------------------------------------
    def run(self) -> None:
        """Stay connected to FreeSWITCH: reconnect with a growing pause, then recover."""
        self._running = True
        backoff = 0.1
        host, port = parse_hostport(self.settings.esl)
        outage = _Outage()
        while self._running:
            lost = GEvent()
            conn = InboundConnection(host, port, self.settings.esl_password, self._on_event, lost.set)
            try:
                conn.connect(EVENTS)
            except Exception as e:      # ESLError mostly; this greenlet must never die
                outage.failed(str(e), backoff)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            self.conn = conn
            self.stopping = False
            self.lost_at = None
            log.info("connected to FreeSWITCH at %s:%d%s", host, port, outage.ended())
            self._kill_pending()
            try:
                self.on_connected()
            except Exception:
                log.exception("reconciling with FreeSWITCH failed; will retry on the next poll")
            self.ready.set()
            self.on_ready()
            lost.wait()
            self.ready.clear()
            self.lost_at = time.monotonic()
            if self._running:
                self.reconnects += 1
                if self.metrics is not None:
                    self.metrics.reconnects.inc()
                log.warning("lost the ESL connection to FreeSWITCH; reconnecting")

    def unreachable_for(self) -> float:
        """Seconds since the switch last answered (0 while connected)."""
        return 0.0 if self.lost_at is None else time.monotonic() - self.lost_at

    def close(self) -> None:
        self._running = False
        if self.conn is not None:
            self.conn.close()

    def _on_event(self, ev: Event) -> None:
        if ev.name == "SHUTDOWN":
            # Calls are about to be cut and modules unloaded: offer nothing until we reconnect.
            log.warning("FreeSWITCH is shutting down; no offers or dials until it is back")
            self.stopping = True
            self.ready.clear()
            return
        if ev.name == "CUSTOM":
            self.on_custom(ev)
            return
        self._route(ev)

    # -- commands (each with a timeout) ------------------------------------------
    def api(self, cmd: str) -> str:
        if self.conn is None or not self.conn.connected:
            raise NotSent("not connected to FreeSWITCH")
        return self.conn.api(cmd)

    def bgapi(self, cmd: str, job_uuid: str) -> None:
        if self.conn is None or not self.conn.connected:
            raise NotSent("not connected to FreeSWITCH")
        self.conn.bgapi(cmd, job_uuid=job_uuid)

    def sendevent(self, name: str, headers: dict[str, str]) -> None:
        """Fire an event into the switch (BLF presence); its values are checked to be one line each."""
        if self.conn is None or not self.conn.connected:
            raise NotSent("not connected to FreeSWITCH")
        reply = self.conn.command(f"sendevent {name}", headers=headers)
        if not (reply.get("Reply-Text") or "").startswith("+OK"):
            raise ESLError(f"sendevent {name} refused: {reply.get('Reply-Text')}")

    def kill(self, uuid: str | None, cause: str = "NORMAL_CLEARING") -> bool:
        """Hang up a leg; one that is gone already is fine. True if the switch hung it up now. One the
        switch could not be asked about is hung up once it answers again (a uuid is never reused: a
        leg we meant to end must not stay up, e.g. an agent parked on a switch whose ESL was cut)."""
        if not uuid:
            return False
        try:
            return self.api(f"uuid_kill {uuid} {cause}").startswith("+OK")
        except ESLError as e:
            log.warning("could not hang up %s (%s); hanging it up once FreeSWITCH answers again", uuid, e)
            self.kill_when_back[uuid] = cause
            if self.owed is not None:
                try:
                    self.owed.owe(uuid, cause)
                except Exception as db_error:       # the database away too: memory keeps it while we run
                    log.warning("leg %s: the hang-up owed could not be stored (%s)", uuid, db_error)
            return False

    def pay_owed(self) -> None:
        """While connected (at each heartbeat): the hang-ups another controller of this switch stored
        when it could not reach it, and any of ours; never raises."""
        if self.conn is None or not self.conn.connected:
            return
        self._kill_pending()

    def _kill_pending(self) -> None:
        """At each connection, before recovery, and at each heartbeat: the legs owed a hang-up, this
        process's and those stored by an earlier run (or by another controller of this switch)."""
        pending, self.kill_when_back = self.kill_when_back, {}
        if self.owed is not None:
            try:
                pending = {**self.owed.owed(), **pending}
            except Exception as e:
                log.warning("the stored hang-ups owed could not be read (%s); the next connection will", e)
        for uuid, cause in pending.items():
            try:
                if self.api(f"uuid_kill {uuid} {cause}").startswith("+OK"):
                    log.warning("hung up leg %s, which we could not hang up while FreeSWITCH was unreachable", uuid)
            except ESLError as e:
                log.warning("could not hang up %s (%s); trying again at the next connection", uuid, e)
                self.kill_when_back[uuid] = cause
                continue
            if self.owed is not None:
                try:
                    self.owed.paid(uuid)         # hung up now, or gone already: nothing owed any more
                except Exception as e:
                    log.warning("leg %s: its hang-up could not be marked done (%s); it is tried again", uuid, e)

    def leg_state(self, uuid: str | None) -> LegState | None:
        """The leg's live state; None when the switch has no such leg."""
        if not uuid:
            return None
        body = self.api(f"uuid_dump {uuid} json")
        if body.startswith("-ERR No such channel"):
            return None
        if body.startswith("-"):
            raise ESLError(f"'uuid_dump {uuid} json' failed: {body.strip()[:80]}")
        try:
            dump = json.loads(body)
        except ValueError:
            raise ESLError(f"'uuid_dump {uuid} json' did not return JSON: {body[:80]!r}") from None
        return LegState(dump.get("Answer-State") == "answered", dump.get("Other-Leg-Unique-ID", ""))

    def leg_exists(self, uuid: str | None) -> bool:
        return bool(uuid) and self.api(f"uuid_exists {uuid}").strip() == "true"

    def bridge(self, a: str, b: str) -> str:
        return self.api(f"uuid_bridge {a} {b}")

    def switch_side(self, cause: str | None) -> bool:
        """The switch, not the person, failed this call (full, or shutting down)."""
        return cause in SWITCH_LIMIT_CAUSES or (self.stopping and cause in SHUTDOWN_CAUSES)


class SwitchHealth:
    """Whether FreeSWITCH takes new calls: the dispatcher and the dialler report what their originates
    met; refusals pause both (pacing.SwitchBackoff), said once in the log and in the metrics."""

    def __init__(self, backoff: SwitchBackoff | None = None, wake: Callable[[], None] = lambda: None) -> None:
        self.backoff = backoff or SwitchBackoff()
        self.wake = wake                          # the dispatcher, when the switch has room again
        self.metrics = None

    def paused(self) -> bool:
        return self.backoff.remaining() > 0

    def remaining(self) -> float:
        return self.backoff.remaining()

    def refused(self, cause: str, agent_id: int | None = None) -> tuple[float, float]:
        """FreeSWITCH refused a new session: (the dispatcher's pause, the agent's pause)."""
        pause, agent_pause = self.backoff.refused(agent_id)
        if self.backoff.refusals == 1:
            log.warning("FreeSWITCH refuses new calls (%s: max-sessions, sessions-per-second or RTP ports used "
                        "up); offers and dials back off, growing to at most %gs, until it takes one again",
                        cause, self.backoff.cap)
        if self.metrics is not None:
            self.metrics.switch_refusals.inc()
            self.metrics.backoff.set(pause)
        return pause, agent_pause

    def accepted(self, agent_id: int | None = None) -> None:
        started = self.backoff.started_at
        ended = self.backoff.accepted(agent_id)
        if ended:
            log.warning("FreeSWITCH takes new calls again, after %d refusals over %.1fs", ended,
                        time.monotonic() - started if started is not None else 0.0)
            if self.metrics is not None:
                self.metrics.backoff.set(0)

    def sent(self) -> None:
        """An originate went out; while the switch refuses, it is a probe (SwitchBackoff.sent)."""
        token = self.backoff.sent()
        if token is not None:
            gevent.spawn_later(self.backoff.probe_window, self._probe_done, token)

    def _probe_done(self, token: int) -> None:
        if self.backoff.probe_passed(token):
            self.accepted()
            self.wake()


class _Outage:
    """Says a switch that cannot be reached once, not at every retry (every 5 s for as long as it is
    down): again only when the reason changes and as a reminder every REMIND seconds; the rest at
    DEBUG. esl_cb_esl_connected and its alert say it meanwhile."""

    REMIND = 300.0

    def __init__(self) -> None:
        self.since: float | None = None
        self.said_at = 0.0
        self.reason = ""

    def failed(self, reason: str, retry_in: float) -> None:
        now = time.monotonic()
        if self.since is None:
            self.since = now
        if reason != self.reason or now - self.said_at >= self.REMIND:
            down = "" if now - self.since < 1 else f" for {now - self.since:.0f}s"
            log.warning("FreeSWITCH not reachable%s (%s); retrying every %.0fs or sooner, said again only if "
                        "this changes or every %.0f min", down, reason, 5.0, self.REMIND / 60)
            self.said_at, self.reason = now, reason
        else:
            log.debug("FreeSWITCH still not reachable (%s); retrying in %.1fs", reason, retry_in)

    def ended(self) -> str:
        """The tail of the 'connected' line: how long it was away, if it was."""
        if self.since is None:
            return ""
        away = time.monotonic() - self.since
        self.since, self.reason, self.said_at = None, "", 0.0
        return f", after {away:.1f}s unreachable"
