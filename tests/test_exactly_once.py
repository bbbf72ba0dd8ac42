"""Never lost, never twice, also between the lines (issue 17): the interleavings a review found,
each driven on purpose (the simulator, real PostgreSQL; waits are for events, not for luck)."""
from __future__ import annotations

import logging

import gevent
from gevent.event import Event as GEvent
from sqlalchemy.exc import OperationalError

from esl_cb.controller.supervision import Supervisor
from esl_cb.domain.queue import Priority
from esl_cb.esl.inbound import CommandTimeout

from .fixtures import wait_until
from .harness import Harness
from .test_callback_flow import quick_script
from .test_concurrency import seed_callbacks

CUSTOMER = "+13125560000"        # seed_callbacks' first number


def _callback_harness(pg_url, **settings) -> Harness:
    h = Harness(pg_url, quick_script(), **settings)
    h.agent("ann", "1001", answer=0.1)
    seed_callbacks(h.store, 1)
    return h


class HeldPacer:
    """The originate pacer, made to wait until the test lets it go (the dial is 'waiting for a token')."""

    def __init__(self, real) -> None:
        self.real = real
        self.waiting = GEvent()
        self.go = GEvent()
        self.hold_urgent = True

    def wait(self, urgent: bool = False) -> float:
        if urgent and self.hold_urgent:
            self.waiting.set()
            self.go.wait()
        return self.real.wait(urgent)

    def __getattr__(self, name):
        return getattr(self.real, name)


# -- 1. a dial after the agent left ------------------------------------------------------------
def test_no_dial_after_the_agent_left_while_it_waited_for_the_pacer(pg_url):
    h = _callback_harness(pg_url)
    try:
        pacer = HeldPacer(h.controller.dialler.pacer)
        h.controller.dialler.pacer = pacer
        h.available("ann")
        wait_until(pacer.waiting.is_set, 15, what="the due dial waiting for the pacer")
        agent_leg = h.contact().agent_leg_uuid
        h.sim_api("endpoint 1001 reject")                 # no second acceptance in this test
        h.sim_api(f"hangup {agent_leg}")
        c = h.wait_state("callback_queued")
        pacer.go.set()
        gevent.sleep(0)                                   # the waiting greenlet runs now
        wait_until(lambda: not h.controller.dialler.sending, 5, what="the dial greenlet to finish")
        assert h.originates_to(CUSTOMER) == []            # the customer was never rung
        assert c.attempts == 0 and h.controller.ports_in_use == 0
        assert [r["result"] for r in h.rows("SELECT result FROM callback_attempts")] == ["not_dialled"]
    finally:
        h.close()


def test_no_dial_after_the_agent_left_while_it_waited_for_a_voice_port(pg_url):
    h = _callback_harness(pg_url, ports=1)
    try:
        busy = h.controller.dialler
        busy.voice_ports_in_use = 1                       # the only port is taken by another call
        h.available("ann")
        wait_until(lambda: busy.sending, 15, what="the due dial waiting for a port")
        h.sim_api("endpoint 1001 reject")
        h.sim_api(f"hangup {h.contact().agent_leg_uuid}")
        h.wait_state("callback_queued")
        busy.voice_ports_in_use = 0                       # the other call ends: a port is free
        busy._port_freed.set()
        wait_until(lambda: not busy.sending, 5, what="the dial greenlet to finish")
        assert h.originates_to(CUSTOMER) == [] and busy.voice_ports_in_use == 0
    finally:
        h.close()


# -- 8. the critical-work gate is never held across the pacer's wait ---------------------------------
def test_offers_wait_for_the_pacer_outside_the_critical_gate(pg_url):
    h = _callback_harness(pg_url)
    try:
        held = HeldPacer(h.controller.dispatcher.pacer)
        held.hold_urgent = False
        blocked = GEvent()
        gate = h.controller.legs.critical

        def wait(urgent: bool = False) -> float:
            blocked.set()
            held.go.wait()
            return held.real.wait(urgent)
        held.wait = wait
        h.controller.dispatcher.pacer = held
        h.available("ann")
        wait_until(blocked.is_set, 10, what="the offer waiting for the pacer")
        assert gate.running == 0          # arriving callers are not held back meanwhile
        held.go.set()
        wait_until(lambda: h.originates_to("1001"), 10, what="the offer, once paced")
    finally:
        h.close()


# -- 11. the events of one contact's two legs, in the order they happened ---------------------------
def test_the_customers_answer_is_acted_on_before_the_agents_later_hangup(pg_url):
    """The customer answers while the database is away; the agent hangs up after that; the database
    comes back. The answer is acted on first (connected, then the bridge finds the agent gone: back to
    the queue, not counted), not the hangup first (which took the dial for abandoned by the agent, put
    the callback back and rang the customer again while their answered call was still up)."""
    h = _callback_harness(pg_url)
    try:
        h.sim_api("endpoint 1001 answer 0.1 1.0")          # the agent hangs up 1 s after answering
        h.sim_api(f"endpoint {CUSTOMER} answer 0.3")
        stored = h.store.dial_answered
        back = GEvent()
        tries = []

        def unavailable(contact_id, leg_uuid, confirmed=None):
            tries.append(leg_uuid)
            if not back.is_set():
                raise OperationalError("UPDATE contacts", {}, Exception("the database is restarting"))
            return stored(contact_id, leg_uuid, confirmed)
        h.store.dial_answered = unavailable
        seen = []
        h.controller.observer = lambda kind, name, app: seen.append((kind, name))
        h.available("ann")
        wait_until(lambda: tries, 15, what="the customer's answer, while the database is away")
        wait_until(lambda: ("agent", "CHANNEL_HANGUP") in seen, 10, what="the agent's hangup, at the controller")
        h.sim_api("endpoint 1001 reject")                  # no second round in this test
        back.set()
        first = "SELECT result FROM callback_attempts WHERE attempt_no = 1"
        wait_until(lambda: h.rows(first)[0]["result"] not in (None, "answered"), 15, what="the first attempt's end")
        assert h.rows(first)[0]["result"] == "agent_gone"
        c = h.wait_state("callback_queued")
        assert c.attempts == 0
    finally:
        h.close()


# -- 7. one reconcile at a time ---------------------------------------------------------------------
def test_reconciles_requested_together_run_one_at_a_time(pg_url):
    h = _callback_harness(pg_url)
    try:
        h.sim_api(f"endpoint {CUSTOMER} answer 30")          # rings on
        h.available("ann")
        c = h.wait_state("dialling")
        d = h.controller.dialler
        watch = h.controller.legs.get(c.callback_leg_uuid)
        d.release_voice_port(watch)                          # as after a restart: nothing watched, no port
        h.controller.legs.forget(watch.uuid)
        running, most = [0], [0]
        real = h.controller.recovery._reconcile

        def counted():
            running[0] += 1
            most[0] = max(most[0], running[0])
            try:
                real()
            finally:
                running[0] -= 1
        h.controller.recovery._reconcile = counted
        gevent.joinall([gevent.spawn(h.controller.recovery.reconcile) for _ in range(3)], raise_error=True)
        assert most[0] == 1
        assert d.voice_ports_in_use == 1 and h.controller.legs.get(c.callback_leg_uuid) is not None
    finally:
        h.close()


# -- 6. half-done steps -----------------------------------------------------------------------------
def test_a_bridge_the_switch_did_not_answer_is_checked_and_made(pg_url):
    """uuid_bridge times out after 'connected' was stored: the pair is looked at again and bridged,
    not left to count later as a completed callback."""
    h = _callback_harness(pg_url)
    try:
        h.sim_api(f"endpoint {CUSTOMER} answer 0.2")
        switch = h.controller.switch
        real = switch.bridge
        timeouts = []

        def no_answer(a, b):
            if not timeouts:
                timeouts.append(b)
                raise CommandTimeout("FreeSWITCH did not answer ['api', 'uuid_bridge'] within 5.0s")
            return real(a, b)
        switch.bridge = no_answer
        h.available("ann")
        c = h.wait_connected(timeout=20)
        assert timeouts == [c.callback_leg_uuid]
        assert len(h.originates_to(CUSTOMER)) == 1
        h.sim_api(f"hangup {c.callback_leg_uuid}")
        assert h.wait_state("ended").outcome == "callback_completed"
    finally:
        h.close()


def test_a_live_caller_whose_bridge_fails_goes_back_to_the_queue(pg_url):
    """Stored as connected, the bridge refused: the caller keeps their place and their music, the
    agent is released; the next agent gets them."""
    h = Harness(pg_url, quick_script())
    try:
        h.agent("ann", "1001", answer=0.1)
        switch = h.controller.switch
        real = switch.bridge
        refused = []

        def refuse_once(a, b):
            if not refused:
                refused.append(a)
                return "-ERR Invalid uuid\n"
            return real(a, b)
        switch.bridge = refuse_once
        caller = h.call("3125550100", "3125557000")
        h.wait_state("queued")
        h.available("ann")
        wait_until(lambda: refused, 15, what="the failed bridge")
        wait_until(lambda: h.contact().state in ("queued", "offered", "connected") and h.contact().agent_leg_uuid
                   != h.originates_to("1001")[0]["uuid"], 10, what="the caller back in the queue")
        c = h.wait_connected(timeout=15)
        assert c.caller_uuid == caller and h.sim.switch.channels[caller].peer.uuid == c.agent_leg_uuid
        assert len(h.originates_to("1001")) == 2            # offered again, then bridged
        assert h.count("SELECT count(*) FROM contacts WHERE outcome IS NOT NULL") == 0
    finally:
        h.close()


def test_a_handler_that_fails_half_way_reconciles_its_contact(pg_url, caplog):
    h = _callback_harness(pg_url)
    try:
        calls = []
        real = h.controller.dialler.accept

        def broken(watch, contact, at):
            calls.append(contact.id)
            if len(calls) == 1:
                real(watch, contact, at)
                raise RuntimeError("something nobody expected, after the acceptance was stored")
            return real(watch, contact, at)
        h.controller.dialler.accept = broken
        caplog.set_level(logging.WARNING)
        h.available("ann")
        c = h.wait_connected(timeout=20)
        assert h.controller.step_failures["agent"] == 1
        assert any("after a failed step" in r.getMessage() and "reconciling it" in r.getMessage() for r in caplog.records)
        assert len(h.originates_to(CUSTOMER)) == 1 and c.attempts == 1
    finally:
        h.close()


# -- 2. supervised greenlets ----------------------------------------------------------------------
def test_a_dispatcher_killed_by_an_esl_timeout_keeps_offering(pg_url):
    """An ESL timeout in the lost-offer sweep used to end the dispatcher greenlet for good."""
    h = _callback_harness(pg_url)
    try:
        d = h.controller.dispatcher
        real = d._sweep_lost_offers
        raised = []

        def sweep():
            if not raised:
                raised.append(True)
                raise CommandTimeout("FreeSWITCH did not answer ['api', 'uuid_exists'] within 5.0s")
            return real()
        d._sweep_lost_offers = sweep
        wait_until(lambda: raised, 10, what="the sweep's timeout")
        h.available("ann")
        h.wait_connected(timeout=20)
        assert not h.controller.greenlet("dispatcher").dead
    finally:
        h.close()


def test_the_supervisor_restarts_a_greenlet_that_dies_and_gives_up_on_one_that_keeps_dying(caplog):
    sup = Supervisor(max_restarts=3, window=60.0, first_pause=0.01, max_pause=0.02)
    runs, fatal = [], []
    sup.on_fatal = fatal.append

    def flaky():
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError("boom")
        gevent.sleep(10)
    g = sup.spawn("flaky", flaky)
    wait_until(lambda: len(runs) == 3, 5, what="two restarts")
    assert sup.restarts["flaky"] == 2 and not g.dead and sup.alive() and not fatal

    def dying():
        raise RuntimeError("always")
    sup.spawn("dying", dying)
    wait_until(lambda: fatal, 5, what="the supervisor to give up")
    assert fatal == ["dying"] and not sup.alive()
    assert any("died 4 times" in r.getMessage() for r in caplog.records)
    sup.stop()


def test_a_greenlet_that_cannot_restart_is_fatal_at_once_unless_retired():
    sup = Supervisor()
    fatal = []
    sup.on_fatal = fatal.append
    stop = GEvent()
    sup.spawn("server", stop.wait, restart=False)
    sup.spawn("retired", stop.wait, restart=False)
    sup.retire("retired")
    stop.set()
    wait_until(lambda: fatal, 5, what="fatal")
    gevent.sleep(0.05)
    assert fatal == ["server"]
    sup.stop()


# -- 4. a takeover with fencing ----------------------------------------------------------------------
def test_a_controller_that_was_only_slow_is_fenced_and_starts_over(pg_url, caplog):
    """A's heartbeats stop getting through (a stall) while it holds a callback in CallDelaySec; B
    adopts it and dials it at its due time. A's own timer fires too: past its lease it asks the
    database first, learns it was taken over, drops what it held and joins again. One dial."""
    from esl_cb.config import Settings
    from esl_cb.controller.service import Controller
    from esl_cb.db.store import Store

    h = Harness(pg_url, quick_script(), heartbeat_timeout=1.5, heartbeat_interval=0.2)
    b = None
    try:
        h.agent("ann", "1001", answer=0.1)
        cid = h.store.create_contact("seed-0", CUSTOMER, "3125557000", "seed", CUSTOMER, "3125557000")
        h.store.queue_contact(cid, "support", Priority(10, 0, 10))
        h.store.request_callback(cid, CUSTOMER, "+13125557000", 3, "+13125557000", CUSTOMER)   # CallDelaySec 3
        a = h.controller
        stalled = GEvent()
        real_beat = a.store.heartbeat

        def beat(esl):
            stalled.wait()                 # A's heartbeat hangs (the database is slow for A, a long GC...)
            return real_beat(esl)
        a.store.heartbeat = beat
        h.available("ann")
        accepted = h.wait_state("accepted")
        assert accepted.controller_id == "test"
        store_b = Store(pg_url, "b")
        b = Controller(Settings(**{**h.settings.__dict__, "controller_id": "b", "listen": "127.0.0.1:0"}),
                       store_b, quick_script()).start()
        wait_until(lambda: h.contact().controller_id == "b", 10, what="B to adopt the contact")
        wait_until(lambda: a.dialler.sending or h.originates_to(CUSTOMER), 10, what="the due time")
        stalled.set()                      # A's beats get through again: it learns it was taken over
        h.wait_connected(timeout=15)
        wait_until(lambda: a.membership.fenced_count == 1, 10, what="A to learn it was fenced")
        assert len(h.originates_to(CUSTOMER)) == 1
        assert any("was taken over by another controller" in r.getMessage() for r in caplog.records)
        assert a.membership.epoch is not None and a.membership.epoch > 0
    finally:
        if b is not None:
            b.stop()
        h.close()
