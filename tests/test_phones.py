"""Agents' phones on the simulator (issue 20): the registration events it learnt from the real switch
(tests/captures/14-registrations.jsonl), and offers that follow them: an agent whose phone has no
registration is not offered, and is again when it registers."""
from __future__ import annotations

import json
import logging

import gevent
import pytest
from sqlalchemy import text

from esl_cb.app import AgentService
from esl_cb.domain import script as scripts
from esl_cb.domain.phones import registration_event, tracked_phone
from esl_cb.esl.inbound import Event as InEvent
from esl_cb.esl.inbound import InboundConnection
from esl_cb.esl.wire import FrameReader
from esl_cb.sim import api as sim_api

from .fixtures import DIALECTS, migrated_store, wait_until
from .harness import Harness
from .replay import CAPTURES

SUBCLASSES = ("sofia::register", "sofia::unregister", "sofia::expire")


def captured_events() -> dict[str, list[tuple[str, str]]]:
    """The first event of each subclass the real switch sent, as (name, raw value) headers."""
    out = {}
    for line in (CAPTURES / "14-registrations.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("dir") != "in" or "text/event-plain" not in rec["raw"]:
            continue
        frame = FrameReader().feed(rec["raw"].encode())[0]
        headers = [tuple(h.split(": ", 1)) for h in frame.body_text().strip("\n").split("\n")]
        sub = dict(headers)["Event-Subclass"].replace("%3A", ":")
        out.setdefault(sub, headers)
    return out


def test_the_simulator_sends_the_registration_events_the_real_switch_sends(pg_url):
    """Same headers in the same order; the values that say who registered where read the same way."""
    real = captured_events()
    assert set(real) == set(SUBCLASSES)
    h = Harness(pg_url)
    seen: list[InEvent] = []
    conn = InboundConnection("127.0.0.1", h.sim.port, "ClueCon", seen.append)
    try:
        conn.connect(["CUSTOM", *SUBCLASSES])
        for what in ("register", "unregister", "expire"):
            h.sim_api(f"phone 2001 {what} 127.0.0.1")
        wait_until(lambda: len(seen) == 3, 5, what="the three events on the wire")
        sim = {ev.get("Event-Subclass"): ev for ev in seen}
        for sub in SUBCLASSES:
            names = [line.split(": ", 1)[0] for line in sim[sub]._text.strip("\n").split("\n")]
            assert names == [k for k, _ in real[sub]], sub
            ours = sim[sub]
            theirs = InEvent("".join(f"{k}: {v}\n" for k, v in real[sub]))
            got = registration_event(sub, ours.get)
            want = registration_event(sub, theirs.get)         # the capture's expiry is user 2002's
            assert got.kind == want.kind and (got.user, got.domain) == ("2001", "127.0.0.1"), sub
            assert want.user in ("2001", "2002") and want.domain == "127.0.0.1", sub
    finally:
        conn.close()
        h.close()


def test_dial_strings_that_are_tracked():
    assert str(tracked_phone("user/2001")) == "2001"
    assert str(tracked_phone("user/2001@pbx.example.com")) == "2001@pbx.example.com"
    for untracked in ("sofia/gateway/pstn/13125550100", "sofia/test/agent1@127.0.0.1:5080", "loopback/9999",
                      "user/", "user/a b"):
        assert tracked_phone(untracked) is None, untracked


@pytest.fixture
def h(pg_url):
    s = scripts.load(scripts.DEFAULT_SCRIPT)
    s.actions["Hold music"].props["MaxDurationSec"] = 30
    harness = Harness(pg_url, s)
    yield harness
    harness.close()


def test_an_unregistered_phone_is_not_offered_until_it_registers_again(h, caplog):
    caplog.set_level(logging.INFO, "esl_cb.controller.phones")
    h.agent("ann", "1001", available=True)
    assert h.sim_api("phone 1001 unregister") == "+OK\n"
    wait_until(lambda: "ann" in h.store.unregistered_agents(), 5, what="ann's phone known unregistered")
    assert "agent ann: not offered: phone not registered" in caplog.text
    h.call("3125550100", "3125557000")
    h.wait_state("queued")
    for _ in range(3):                     # the dispatcher looks (woken, and by its poll): nobody to offer
        h.controller.wake_dispatcher()
        gevent.sleep(0.3)
    assert h.originates_to("1001") == [] and h.contact(1).state == "queued"
    assert h.sim_api("phone 1001 register") == "+OK\n"
    wait_until(lambda: h.originates_to("1001"), 5, what="the offer to ann once her phone registered")
    assert "agent ann: phone 1001@" in caplog.text


def test_a_reconnection_asks_the_switch_for_every_tracked_phone(h):
    """Events missed while away: the phones are asked at each connection (sofia_contact)."""
    h.agent("ann", "1001", available=True)
    h.agent("bob", "1002", available=True)
    h.sim.switch.phones = {"unregistered": {"1002"}, "call_ids": {}}      # no event: the switch just knows
    h.controller.phones.check_all()
    assert list(h.store.unregistered_agents()) == ["bob"]
    domain = sim_api.execute(h.sim.switch, "global_getvar", "domain").strip()     # the switch's, for user/N
    assert domain and sorted(h.commands("api sofia_contact ")[-2:]) == [f"api sofia_contact 1001@{domain}",
                                                                       f"api sofia_contact 1002@{domain}"]


@pytest.fixture(params=DIALECTS)
def store(request, tmp_path):
    with migrated_store(request.param, tmp_path) as st:
        yield st


def test_pins_are_hashed_wrong_ones_audited_and_too_many_lock_the_login(store):
    from esl_cb.app.phones import LOCK_AFTER, PhoneService
    from esl_cb.domain.errors import InvalidInput

    phones = PhoneService(store)
    store.add_agent("pat", "user/2001", ["support"])
    store.add_agent("rex", "sofia/gateway/pstn/13125550100", ["support"])
    assert phones.set_pin("pat", "1357", operator="admin") == "2001"      # the phone's user, when digits
    assert phones.set_pin("rex", "2468", operator="admin") == str(store.agent("rex").id)
    with pytest.raises(InvalidInput):
        phones.set_pin("pat", "12ab")
    stored = store.agent("pat").pin_hash
    assert stored.startswith("scrypt$") and "1357" not in stored
    assert phones.login("2001", "1357", "2001").name == "pat"
    assert phones.login("9999", "1357", "2001").why == "unknown"
    for _ in range(LOCK_AFTER - 1):
        assert phones.login("2001", "0000", "3125550100").why == "wrong_pin"
    assert phones.login("2001", "1357", "2001").name == "pat"                 # a right PIN resets the count
    for _ in range(LOCK_AFTER):
        assert phones.login("2001", "0000", "3125550100").why == "wrong_pin"
    assert phones.login("2001", "1357", "2001").why == "locked"               # locked: the right PIN too
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT operator, detail FROM audit_log WHERE action = 'agent pin wrong' "
                                 "ORDER BY id")).all()
    assert len(rows) == 2 * LOCK_AFTER - 1 and rows[0].operator == "phone 3125550100"
    assert "locked until" in rows[-1].detail
    assert phones.trusted_caller("2001") == "pat" and phones.trusted_caller("7777") is None
    assert phones.feature("pat", "login", caller="2001").after == "Available"
    assert phones.already("pat", "login") and phones.already("pat", "available") and not phones.already("pat", "logout")
    phones.feature("rex", "login", caller="2002")
    phones.feature("rex", "break", "07", caller="2002")                   # *2507: OnBreak, reason 'code 07'
    assert (store.agent("rex").state, store.agent("rex").state_reason) == ("OnBreak", "code 07")
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT operator, detail FROM audit_log WHERE action = 'agent state' "
                                 "AND target = 'rex' ORDER BY id DESC LIMIT 1")).one() == (
            "phone 2002", "Available -> OnBreak (code 07)")


def test_an_agent_made_available_from_the_phone_is_not_offered_while_on_that_call(store):
    """Reviewer's finding: *22/*24 committed Available and woke the dispatcher while the phone was still
    on the feature call; a phone without call waiting answered the offer 486 (a miss, the busy delay).
    The hold is in the change's own statement, so no claim can come between."""
    from esl_cb.app.phones import FEATURE_CALL_HOLD, PhoneService
    from esl_cb.db.agent_states import why_not_offered
    from esl_cb.db.store import as_utc, utcnow

    phones = PhoneService(store)
    store.add_agent("pat", "user/2001", ["support"])
    assert phones.feature("pat", "login", caller="2001").after == "Available"
    a = store.agent("pat")
    assert a.offer_not_before is not None
    left = (as_utc(a.offer_not_before) - utcnow()).total_seconds()
    assert 0 < left <= FEATURE_CALL_HOLD[0]
    assert "on the feature-code call" in why_not_offered(a, utcnow())
    from esl_cb.domain.queue import Priority
    cid = store.create_contact("call-1", "+13125550100", "3125557000", "t", "+13125550100", "3125557000")
    store.queue_contact(cid, "support", Priority(10, 0, 10))
    assert store.claim_offer("leg-1") is None                      # not while on the feature call


def test_each_agent_change_is_a_presence_event_for_the_blf_lamp(h):
    """The NOTIFY of an agent's change becomes a PRESENCE_IN fired into the switch (sendevent): off
    (terminated) when Available, blinking (early) while offered, lit (confirmed) otherwise."""
    seen: list[InEvent] = []
    conn = InboundConnection("127.0.0.1", h.sim.port, "ClueCon", seen.append)
    conn.connect(["PRESENCE_IN"])
    try:
        h.agent("ann", "1001")
        h.available("ann")

        def lamp(state: str):
            return [e for e in seen if e.get("from") == "agent+ann@192.0.2.2" and e.get("esl_cb_agent_state") == state]
        available = wait_until(lambda: lamp("Available"), 5, what="ann's presence: Available")[-1]
        assert (available.get("answer-state"), available.get("proto"), available.get("event_type")) == (
            "terminated", "agent", "presence")
        h.call("3125550100", "3125557000")
        assert wait_until(lambda: lamp("Offered"), 10, what="ann's presence: offered")[-1].get("answer-state") == "early"
    finally:
        conn.close()


def test_every_lamp_is_sent_again_when_the_controller_reconnects(h):
    """A restarted switch (or one whose ESL was cut while agents changed) shows no or stale lamps: at
    each connection every agent's state is sent again, with no change of theirs (reviewer's finding)."""
    h.agent("ann", "1001")
    h.agent("bob", "1002")
    h.available("ann")
    h.available("bob")
    AgentService(h.store).set_agent_state("bob", "break", reason="lunch")
    wait_until(lambda: h.controller.presence.queue.empty() and h.controller.reconnects == 0, 5, what="quiet")
    gevent.sleep(0.3)
    h.sim.drop_connections()
    seen: list[InEvent] = []
    conn = InboundConnection("127.0.0.1", h.sim.port, "ClueCon", seen.append)
    conn.connect(["PRESENCE_IN"])
    try:
        wait_until(lambda: h.controller.reconnects >= 1, 10, what="the reconnect")

        def lamps():
            return {e.get("from"): (e.get("esl_cb_agent_state"), e.get("status"), e.get("answer-state")) for e in seen}
        wait_until(lambda: len(lamps()) == 2, 10, what="both lamps sent again")
        assert lamps() == {"agent+ann@192.0.2.2": ("Available", "Available", "terminated"),
                           "agent+bob@192.0.2.2": ("OnBreak", "On break", "confirmed")}
    finally:
        conn.close()


def test_a_refresh_of_a_stored_registration_needs_no_transaction(h, monkeypatch):
    """A phone re-REGISTERs every few minutes (a sofia::register each time): stored once."""
    calls = []
    real = h.store.phone_registered
    monkeypatch.setattr(h.store, "phone_registered", lambda *a: calls.append(a[1]) or real(*a))
    for user in ("1001", "1001", "1002"):          # one worker, in order: 1002 stored means 1001's refresh was seen
        h.sim_api(f"phone {user} register")
    wait_until(lambda: "1002" in calls, 5, what="1002's registration stored")
    assert calls == ["1001", "1002"]
