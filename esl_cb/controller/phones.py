"""Agents' phones: registration-aware offers (issue 20).

The switch says when a phone registers, un-registers or expires (CUSTOM sofia::register,
sofia::unregister, sofia::expire on the inbound connection); at each connection every tracked phone
is asked for (`sofia_contact USER@DOMAIN`). What it says is stored per switch (db/phones.py) and the
claim skips an agent whose phone no switch has a registration of. An un-register or an expiry does not
say whether other bindings of the user are left (domain/phones.py), so the switch is asked again:
the last one gone decides.

Tracked: agents whose dial string is a directory user of a switch (user/2001). In a fleet behind
Kamailio, agents register at the proxy and are dialled by a SIP URI through it: not tracked.
"""
from __future__ import annotations

import logging
from typing import Callable

import gevent
from gevent.queue import Queue
from sqlalchemy.exc import SQLAlchemyError

from esl_cb.db.store import Store
from esl_cb.domain.phones import NOT_REGISTERED, registration_event
from esl_cb.esl.inbound import ESLError, Event

log = logging.getLogger(__name__)
# CUSTOM subclasses subscribed on the inbound connection (after the plain event names).
SUBCLASSES = ("sofia::register", "sofia::unregister", "sofia::expire")


class PhoneWatch:
    def __init__(self, store: Store, switch_name: str, api: Callable[[str], str], wake: Callable[[], None]) -> None:
        self.store = store
        self.switch_name = switch_name         # the switch as the fleet names it (its --esl address)
        self.api = api
        self.wake = wake
        self.events: Queue = Queue()
        self.domain = ""                       # the switch's default domain, for user/N without one
        # Phones stored as registered here: a phone re-REGISTERs every few minutes (a sofia::register
        # each time), and a refresh of one already stored needs no transaction.
        self.stored: set[tuple[str, str]] = set()
        self.worker: gevent.Greenlet | None = None

    def stop(self) -> None:
        """The controller stopped: store nothing more (the next connection's check sets rows right)."""
        if self.worker is not None:
            self.worker.kill(block=False)

    def on_event(self, ev: Event) -> None:
        """From the ESL reader: never blocks (the worker does the asking and the storing)."""
        change = registration_event(ev.get("Event-Subclass"), ev.get)
        if change is None:
            return
        self.events.put(change)
        if self.worker is None or self.worker.dead:
            self.worker = gevent.spawn(self._work)

    def _work(self) -> None:
        while not self.events.empty():
            change = self.events.get()
            for attempt in range(3):
                try:
                    self.handle(change)
                    break
                except (SQLAlchemyError, ESLError) as e:
                    log.warning("phone %s@%s: %s not stored yet (%s); retrying", change.user, change.domain,
                                change.kind, e)
                    gevent.sleep(0.5 * (attempt + 1))
            else:
                log.error("phone %s@%s: %s could not be stored; the next connection's check sets it right",
                          change.user, change.domain, change.kind)

    def handle(self, change) -> None:
        domain = change.domain or self.domain
        key = (change.user, domain)
        if change.kind == "register":
            if key in self.stored:
                return
            back = self.store.phone_registered(self.switch_name, change.user, domain, change.contact)
            self.stored.add(key)
            for name in back:
                log.info("agent %s: phone %s@%s registered; offered again", name, change.user, domain)
            if back:
                self.wake()
            return
        # An un-register or an expiry: are other bindings left? The switch knows.
        self.stored.discard(key)
        left = self.api(f"sofia_contact {change.user}@{domain}").strip()
        if left and not left.startswith(NOT_REGISTERED) and not left.startswith("-ERR"):
            log.info("phone %s@%s: one registration %s, others remain (%s)", change.user, domain,
                     "ended" if change.kind == "unregister" else "expired", left)
            return
        for name in self.store.phone_gone(self.switch_name, change.user, domain):
            log.warning("agent %s: not offered: phone not registered (%s@%s %s)", name, change.user, domain,
                        "un-registered" if change.kind == "unregister" else "registration expired")

    def check_all(self) -> None:
        """At each connection: ask the switch for every tracked phone (events may have been missed)."""
        got = self.api("global_getvar domain").strip()
        if got and not got.startswith("-ERR"):
            self.domain = got
        found: dict[tuple[str, str], str | None] = {}
        for user, domain in self.store.tracked_phones():
            where = domain or self.domain
            answer = self.api(f"sofia_contact {user}@{where}").strip()
            if answer.startswith("-ERR"):         # no mod_sofia: nothing known, nothing changed
                continue
            found[(user, where)] = None if answer.startswith(NOT_REGISTERED) or not answer else answer
        back, gone = self.store.phones_checked(self.switch_name, found)
        self.stored = {key for key, contact in found.items() if contact is not None}
        for name in gone:
            log.warning("agent %s: not offered: phone not registered", name)
        for name in back:
            log.info("agent %s: phone registered; offered again", name)
        if back:
            self.wake()
