"""The leg registry: every leg we placed or watch, and the one worker that handles its events.

The ESL reader only routes (it never blocks): an event goes to the lane of the contact its leg
belongs to, and that lane's own greenlet runs the handler of the leg's kind (caller, agent,
callback), one event at a time, in the order the switch sent them. One lane per contact, not per
leg: the customer's answer and the agent's hangup of one callback are acted on in the order they
happened, even when the first waits for the database (issue 17: with a lane per leg, an agent's
hangup was stored before the answer that came first, and the customer was dialled again). A handler
that meets a database outage is retried with the same event until the database answers: nothing is
acted on without being stored.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator

import gevent
from gevent.event import Event as GEvent
from gevent.queue import Empty, Queue
from sqlalchemy.exc import SQLAlchemyError

from esl_cb.db.store import DialPlan, Offer
from esl_cb.esl.inbound import Event

log = logging.getLogger(__name__)

# A handler returns True when the leg is finished (its worker stops and the leg is forgotten).
Handler = Callable[["LegWatch", Event], bool]
# Legs whose events are the time-critical path: an agent's answer (accept, prepare the dial), the
# customer's answer (the bridge). Callers' arrivals wait while one of them is being handled.
CRITICAL_KINDS = ("agent", "callback")


class CriticalWork:
    """gevent runs greenlets first come, first served: in a burst of arrivals an agent's answer waits
    behind every caller's database work that is ready before it (measured on the real switch, issue
    12). The time-critical handlers say when they run; callers' arrivals ask before each transaction
    and wait while one runs, at most `max_wait` seconds (so a steady stream of answers never starves
    the callers)."""

    def __init__(self, max_wait: float = 0.05) -> None:
        self.max_wait = max_wait
        self.running = 0
        self._idle = GEvent()
        self._idle.set()

    @contextmanager
    def running_now(self) -> Iterator[None]:
        self.running += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.running -= 1
            if not self.running:
                self._idle.set()

    def yield_to_it(self) -> None:
        """Called by work that can wait (an arriving caller's next transaction)."""
        if self.running:
            self._idle.wait(self.max_wait)


@dataclass
class LegWatch:
    """One leg we placed or are watching; its events are handled in order in its contact's lane."""

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
    holds_port: bool = False                   # a callback leg counted in voice_ports_in_use
    caller_uuid: str = ""                      # an agent leg's live caller, once they are being bridged
    finished: bool = False                     # its handler said it is done (it is forgotten)


@dataclass
class ContactLane:
    """The events of one contact's legs, in arrival order, and the greenlet handling them."""

    queue: Queue = field(default_factory=Queue)
    worker: gevent.Greenlet | None = None


class LegRegistry:
    def __init__(self) -> None:
        self.legs: dict[str, LegWatch] = {}
        self.lanes: dict[int, ContactLane] = {}     # contact id -> its events, while it has any
        self.jobs: dict[str, str] = {}            # Job-UUID -> leg uuid
        self.handlers: dict[str, Handler] = {}    # kind -> handler, registered by their owners
        self.critical = CriticalWork()
        # (leg kind, seconds from an answer event's arrival to its handler's end): the metrics.
        self.answer_timing: Callable[[str, float], None] | None = None
        # Tests compare what the controller saw on the simulator and on the real switch: when set,
        # called with (leg kind, event name, application) for every event routed.
        self.observer: Callable[[str, str, str], None] | None = None
        # A handler failed with something other than the database (the controller reconciles that
        # contact and counts it): (watch, event name, exception).
        self.on_failure: Callable[[LegWatch, str, Exception], None] | None = None
        # True during a database outage that was already said once (db/outage.py): retries say less.
        self.database_away: Callable[[], bool] = lambda: False

    def __contains__(self, uuid: object) -> bool:
        return uuid in self.legs

    def stop(self) -> None:
        """The controller stopped: no lane handles another event (a worker retrying through a database
        outage would otherwise reconnect after the stop; what it held is stored or reconciled later)."""
        for lane in list(self.lanes.values()):
            if lane.worker is not None:
                lane.worker.kill(block=False)
        self.lanes.clear()

    def get(self, uuid: str | None) -> LegWatch | None:
        return self.legs.get(uuid) if uuid else None

    def watch(self, watch: LegWatch) -> LegWatch:
        """Route this leg's events to it. Its worker greenlet starts with the first event: a caller
        waiting in queue gets none for minutes, and 2,000 idle greenlets cost memory."""
        self.legs[watch.uuid] = watch
        return watch

    def forget(self, uuid: str) -> None:
        self.legs.pop(uuid, None)

    def expect_job(self, job_uuid: str, leg_uuid: str) -> None:
        """A bgapi originate's BACKGROUND_JOB carries only its Job-UUID: map it to the leg."""
        self.jobs[job_uuid] = leg_uuid

    def drop_job(self, job_uuid: str) -> None:
        self.jobs.pop(job_uuid, None)

    def route(self, ev: Event) -> None:
        """From the ESL reader: hand the event to the leg it belongs to (never blocks)."""
        name = ev.name
        if name == "BACKGROUND_JOB":
            leg = self.jobs.pop(ev.get("Job-UUID"), None)
            watch = self.legs.get(leg) if leg else None
        else:
            watch = self.legs.get(ev.uuid)
        if watch is not None:
            if self.observer is not None:
                self.observer(watch.kind, name, "")
            self.deliver(watch, ev)

    def deliver(self, watch: LegWatch, ev: Event) -> None:
        lane = self.lanes.get(watch.contact_id)
        if lane is None:
            lane = self.lanes[watch.contact_id] = ContactLane()
        lane.queue.put((watch, ev))
        if lane.worker is None:
            lane.worker = gevent.spawn(self._worker, watch.contact_id, lane)

    def _worker(self, contact_id: int, lane: ContactLane) -> None:
        """Handle the contact's events one by one; ends (and the lane with it) when none are left."""
        while True:
            try:
                watch, ev = lane.queue.get_nowait()
            except Empty:
                if self.lanes.get(contact_id) is lane:
                    del self.lanes[contact_id]
                return
            if self._handle(watch, ev):
                self.legs.pop(watch.uuid, None)
                watch.finished = True

    def _handle(self, watch: LegWatch, ev: Event) -> bool:
        if watch.finished:
            return False            # a leg already done (an event repeated by a resync)
        handler = self.handlers[watch.kind]
        critical = watch.kind in CRITICAL_KINDS
        backoff = 0.2
        while True:
            try:
                if critical:
                    with self.critical.running_now():
                        done = handler(watch, ev)
                    if ev.name == "CHANNEL_ANSWER" and ev.received and self.answer_timing is not None:
                        self.answer_timing(watch.kind, time.monotonic() - ev.received)
                else:
                    done = handler(watch, ev)
                return done
            except SQLAlchemyError as e:
                # Never act without storing: hold this contact's events until the database is back.
                log.log(logging.DEBUG if self.database_away() else logging.ERROR,
                        "contact %s leg %s: database unavailable handling %s (%s); retrying in %.1fs",
                        watch.contact_id, watch.uuid, ev.name, type(e).__name__, backoff)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception as e:
                # Half done: the step's own store call may have gone through. Never just log and move
                # on: the contact is looked at again as a whole once the switch answers (recovery).
                log.exception("contact %s leg %s: handling %s failed; reconciling the contact", watch.contact_id,
                              watch.uuid, ev.name)
                if self.on_failure is not None:
                    self.on_failure(watch, ev.name, e)
                return False


def quiet(store, level: int) -> int:
    """The level for a retry's log line: DEBUG while the database outage it meets was said once already
    (db/outage.py says it once, and once when it is back)."""
    outage = getattr(store, "outage", None)
    return logging.DEBUG if outage is not None and outage.away else level


def synthetic(name: str, uuid: str, body: bytes = b"") -> Event:
    """An event the switch sent while we could not hear it (resync after a reconnect or restart)."""
    return Event.from_headers([("Event-Name", name), ("Unique-ID", uuid), ("Hangup-Cause", "LOST_EVENTS")], body)


def job_failed(watch: LegWatch, ev: Event) -> str | None:
    """Note the originate's result; the cause when it failed before the leg answered."""
    watch.job_done = True
    result = ev.body.decode(errors="replace").strip()
    if result.startswith("-ERR") and not watch.answered:
        return result[4:].strip() or "UNKNOWN"
    return None


def answered_at(ev: Event) -> datetime | None:
    """When the leg was picked up, by the switch's clock: CallDelaySec counts from there, not from when
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


def billsec(ev: Event) -> int | None:
    try:
        return int(ev.variable("billsec"))
    except (TypeError, ValueError):
        return None
