"""Who claims first for a NOTIFY (controller/wakeups.py, issue 18): one controller at once, the others
later; and a chosen controller that cannot act strands nothing (simulator, two controllers, a real
PostgreSQL)."""
from __future__ import annotations

import time

import gevent
from sqlalchemy import text

from esl_cb.config import Settings
from esl_cb.controller.service import Controller
from esl_cb.controller.wakeups import WakeRouter
from esl_cb.db.store import Store
from esl_cb.domain.states import AgentState

from .fixtures import wait_until
from .harness import Harness
from .test_callback_flow import quick_script
from .test_concurrency import seed_callbacks


def routers(others_after: float = 0.05) -> tuple[WakeRouter, WakeRouter, list, list]:
    woken_a, woken_b = [], []
    a = WakeRouter("a", woken_a.append, others_after)
    b = WakeRouter("b", woken_b.append, others_after)
    for r in (a, b):
        r.set_members(["b", "a"])
    return a, b, woken_a, woken_b


def test_one_controller_claims_at_once_for_a_notify_and_the_other_later():
    a, b, woken_a, woken_b = routers()
    payloads = [f"agent agent{i}" for i in range(40)]
    assert {a.chosen(p) for p in payloads} == {"a", "b"}           # spread over both
    for p in payloads:
        assert a.chosen(p) == b.chosen(p)                          # both agree who is first
        a.on_notify([p], 1.0)
        b.on_notify([p], 1.0)
    # Each NOTIFY woke exactly one controller at once, with the NOTIFY's arrival for the timings.
    assert a.woken_now + b.woken_now == 40 and a.woken_later + b.woken_later == 40
    assert woken_a == [1.0] * a.woken_now and woken_b == [1.0] * b.woken_now
    gevent.sleep(0.15)
    # The others' deferred wake-ups, coalesced: one claim covers every NOTIFY of the meantime.
    assert woken_a.count(None) == 1 and woken_b.count(None) == 1


def test_every_controller_claims_at_once_when_others_after_is_zero_or_members_unknown():
    a, b, woken_a, woken_b = routers(others_after=0)
    for p in ("agent x", "agent y", "skill s"):
        a.on_notify([p], 2.0)
        b.on_notify([p], 2.0)
    assert woken_a == woken_b == [2.0] * 3
    lone = WakeRouter("c", (woken := []).append, 0.25)      # no heartbeat read yet: acts on everything
    lone.on_notify(["agent x"], 3.0)
    assert woken == [3.0]
    lone.set_members(["a", "b"])                             # not among those who may offer (draining)
    lone.on_notify(["agent x"], 4.0)
    assert woken == [3.0, 4.0]


def name_chosen_for(router: WakeRouter, controller: str) -> str:
    return next(n for n in (f"agent{i}" for i in range(100)) if router.chosen(f"agent {n}") == controller)


def two_controllers(pg_url: str, **settings) -> tuple[Harness, Controller]:
    h = Harness(pg_url, quick_script(), heartbeat_interval=0.3, **settings)
    b = Controller(Settings(**{**h.settings.__dict__, "controller_id": "b", "listen": "127.0.0.1:0"}),
                   Store(pg_url, "b"), quick_script()).start()
    wait_until(lambda: h.controller.wakeups.members == ["b", "test"] and b.wakeups.members == ["b", "test"], 10,
               what="both controllers to see each other")
    return h, b


def test_a_chosen_controller_that_does_not_claim_strands_nothing(pg_url):
    """The NOTIFY's chosen controller is alive (it beats) but its dispatcher does not run (a stall):
    the other offers the waiting callback to the agent after its short delay. The poll interval is
    30 s here, so only the deferred wake-up can have found it."""
    h, b = two_controllers(pg_url, poll_interval=30, notify_others_after=0.3)
    try:
        name = name_chosen_for(b.wakeups, "test")
        h.agent(name, "1001", answer=0.1)
        seed_callbacks(h.store, 1)
        h.sim_api("endpoint +13125560000 answer 0.2")
        h.controller.supervisor.retire("dispatcher")
        h.controller.dispatcher.stop()
        h.controller.dispatcher.wake()                  # its loop ends
        gevent.sleep(0.2)
        later = b.wakeups.woken_later
        t0 = time.monotonic()
        h.store.set_agent_state(name, AgentState.AVAILABLE, list(AgentState))     # the NOTIFY
        offered = h.wait_state("offered", timeout=5)
        took = time.monotonic() - t0
        assert offered.controller_id == "b"
        assert b.wakeups.woken_later == later + 1           # b was not the one chosen...
        assert 0.25 <= took < 3.0, took                     # ... and took it after its delay, not a poll
        h.wait_connected(timeout=10)
        assert len(h.originates_to("+13125560000")) == 1
    finally:
        b.stop()
        h.close()


def test_the_chosen_controller_offers_at_once_and_the_other_claims_nothing_meanwhile(pg_url):
    h, b = two_controllers(pg_url, poll_interval=30, notify_others_after=1.0)
    try:
        name = name_chosen_for(b.wakeups, "b")
        h.agent(name, "1001", answer=0.1)
        seed_callbacks(h.store, 1)
        h.sim_api("endpoint +13125560000 answer 0.2")
        gevent.sleep(0.2)
        now, later = h.controller.wakeups.woken_now, h.controller.wakeups.woken_later
        t0 = time.monotonic()
        h.store.set_agent_state(name, AgentState.AVAILABLE, list(AgentState))
        offered = h.wait_state("offered", timeout=5)
        assert offered.controller_id == "b" and time.monotonic() - t0 < 0.9      # before the other's delay
        assert (h.controller.wakeups.woken_now, h.controller.wakeups.woken_later) == (now, later + 1)
        h.wait_connected(timeout=10)
    finally:
        b.stop()
        h.close()


def test_controllers_on_a_draining_switch_are_not_chosen(pg_url):
    h, b = two_controllers(pg_url)
    try:
        assert h.store.offering_controllers(10) == ["b", "test"]
        h.store.add_switch("lab", h.settings.esl)
        wait_until(lambda: h.store.offering_controllers(10) == ["b", "test"], 10,
                   what="the registered switch seen by a heartbeat")
        h.store.set_switch_state("lab", "draining")
        assert h.store.offering_controllers(10) == []          # both beat for the same (draining) switch
        wait_until(lambda: h.controller.wakeups.members == [] and b.wakeups.members == [], 5,
                   what="the members read again")
    finally:
        b.stop()
        h.close()


def test_a_switch_not_reached_lately_and_an_agent_on_another_switch_pick_the_controller_that_can_act(pg_url):
    """A controller whose switch is cut or dead beats on but offers nothing: not chosen (else every
    NOTIFY hashed to it waited the delay). An agent whose phone is registered on one switch only
    (migration 0016: only that switch's controllers claim them): their NOTIFY picks among those."""
    a, b, cli = Store(pg_url, "ctl-a"), Store(pg_url, "ctl-b"), Store(pg_url, "")
    try:
        a.register("10.0.0.1:8021")
        b.register("10.0.0.2:8021")
        cli.add_switch("sw-a", "10.0.0.1:8021")
        cli.add_switch("sw-b", "10.0.0.2:8021")
        a.switch_share("10.0.0.1:8021", seen=True)
        assert cli.offering_controllers(10) == ["ctl-a"]          # B's switch never reached
        b.switch_share("10.0.0.2:8021", seen=True)
        assert cli.offering_controllers(10) == ["ctl-a", "ctl-b"]
        with cli.engine.begin() as conn:
            conn.execute(text("UPDATE switches SET last_seen = now() - interval '30 seconds' WHERE name = 'sw-a'"))
        assert cli.offering_controllers(10) == ["ctl-b"]          # A's switch unreached for 30 s

        for name, user in (("pat", "2001"), ("sam", "2002")):
            cli.add_agent(name, f"user/{user}", ["support"])
        cli.phone_registered("10.0.0.2:8021", "2001", "example.com", "sip:2001@192.0.2.9")
        assert cli.phone_reach() == {"pat": {"ctl-b"}}
        woken: dict[str, list] = {"ctl-a": [], "ctl-b": []}
        routers = [WakeRouter(c, woken[c].append, 0.25) for c in ("ctl-a", "ctl-b")]
        for r in routers:
            r.set_members(["ctl-a", "ctl-b"])
            r.set_reach(cli.phone_reach())
        for r in routers:
            assert r.chosen("agent pat") == "ctl-b"                 # only B's switch can ring pat
            r.on_notify(["agent pat"], 1.0)
        assert woken == {"ctl-a": [], "ctl-b": [1.0]}
        assert {routers[0].chosen(f"agent sam{i}") for i in range(20)} == {"ctl-a", "ctl-b"}   # not tracked
        for r in routers:
            r.on_notify(["phones"], 2.0)                             # a registration changed: everyone now
        assert woken["ctl-a"] == [2.0] and woken["ctl-b"] == [1.0, 2.0]
    finally:
        for r in locals().get("routers", []):
            r.stop()
        for s in (a, b, cli):
            s.close()
