"""The leg registry: every leg we placed or watch, and the one worker that handles its events.

The ESL reader only routes (it never blocks): an event goes to the queue of the leg it belongs to,
and that leg's own greenlet runs the handler of its kind (caller, agent, callback), one event at a
time, in order. A handler that meets a database outage is retried with the same event until the
database answers: nothing is acted on without being stored.
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
from gevent.queue import Queue
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


class LegRegistry:
    def __init__(self) -> None:
        self.legs: dict[str, LegWatch] = {}
        self.jobs: dict[str, str] = {}            # Job-UUID -> leg uuid
        self.handlers: dict[str, Handler] = {}    # kind -> handler, registered by their owners
        self.critical = CriticalWork()
        # (leg kind, seconds from an answer event's arrival to its handler's end): the metrics.
        self.answer_timing: Callable[[str, float], None] | None = None
        # Tests compare what the controller saw on the simulator and on the real switch: when set,
        # called with (leg kind, event name, application) for every event routed.
        self.observer: Callable[[str, str, str], None] | None = None

    def __contains__(self, uuid: object) -> bool:
        return uuid in self.legs

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
        watch.queue.put(ev)
        if watch.worker is None:
            watch.worker = gevent.spawn(self._worker, watch)

    def _worker(self, watch: LegWatch) -> None:
        handler = self.handlers[watch.kind]
        critical = watch.kind in CRITICAL_KINDS
        while True:
            ev = watch.queue.get()
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
