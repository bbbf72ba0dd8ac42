"""The web pages in a real browser (Debian's Chromium through Selenium), served by a real `esl-cb api`
process, with the real FreeSWITCH where a caller or a phone is in the story (issue 19)."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import text

from esl_cb.db.store import Store, utcnow
from esl_cb.domain.states import AgentState

from .api_helpers import ApiProcess, make_token
from .browser import browser_factory  # noqa: F401  (a fixture)
from .freeswitch.rig import RealRig, fs_rig, until  # noqa: F401  (fs_rig is a fixture)
from .harness import TABLES
from .test_real_flows import quick

CUSTOMER = "+13125550101"          # phones.xml: a number ending in 1 answers
OTHER = "+13125550111"


@pytest.fixture(scope="module")
def api(pg_url, tmp_path_factory):
    proc = ApiProcess(tmp_path_factory.mktemp("api"), pg_url, "--rate-limit", "0")
    yield proc
    proc.stop()


@pytest.fixture
def rig(fs_rig, pg_url):  # noqa: F811
    r = RealRig(fs_rig, pg_url, quick(delay=1))
    yield r
    r.close()


@pytest.mark.freeswitch
def test_a_callers_callback_shows_on_the_supervisors_page_at_once_and_is_cancelled_there(rig, api, browser_factory):
    rig.agent("alice", "agent1")
    secret, _ = make_token(rig.store, "wall", "supervisor")
    b = browser_factory(api.url)
    b.sign_in(secret, "/ui/supervisor")
    b.wait(lambda d: b.css("table.queue[data-skill='support']") and "Live" in b.text("#live"),
           what="the support queue, live")
    b.watch_rows()
    rig.call(CUSTOMER, key="1", key_after=0.5)            # presses 1 on the real switch
    queued = rig.wait_state("callback_queued", timeout=15)
    b.wait(lambda d: b.seen_at(1, "callback_queued"), timeout=5, what="contact 1's row as a callback")
    shown_after = b.seen_at(1, "callback_queued") - queued.callback_requested_at.timestamp()
    assert shown_after < 1.0, f"the callback showed {shown_after:.3f}s after it was stored"
    row = b.text("tr[data-contact='1']")
    assert CUSTOMER in row and "callback queued" in row
    b.screenshot("supervisor-callback-waiting")

    b.click("button[aria-label='Cancel callback 1']")
    ended = rig.wait_state("ended", timeout=5)
    assert ended.outcome == "cancelled"
    b.wait(lambda d: not b.css("tr[data-contact='1']"), what="the cancelled row to go")
    assert "Callback #1 cancelled" in b.text("#message")
    b.screenshot("supervisor-callback-cancelled")

    # An agent free now is offered the next callback, never the cancelled one; the wire says so.
    with rig.store.engine.begin() as conn:
        conn.execute(text("UPDATE skills SET outbound_caller_id = '+13125557000'"))
    with api.client(secret) as c:
        assert c.post("/api/v1/callbacks", json={"number": OTHER, "skill": "support"}).status_code == 201
    rig.available("alice")
    until(lambda: rig.invites_to(OTHER.lstrip("+")), timeout=15, what="the next callback's dial")
    assert rig.invites_to(CUSTOMER.lstrip("+")) == []
    assert [i for i in rig.invites_to("agent1") if CUSTOMER in i.text] == []


@pytest.mark.freeswitch
def test_an_agent_goes_available_on_the_agent_page_and_the_offer_arrives(rig, api, browser_factory):
    rig.agent("alice", "agent1")
    rig.store.set_agent_state("alice", AgentState.UNAVAILABLE, list(AgentState))
    secret, _ = make_token(rig.store, "alice", "agent", "alice")
    wall, _ = make_token(rig.store, "wall", "supervisor")
    with api.client(wall) as c:
        booked = c.post("/api/v1/callbacks", json={"number": CUSTOMER, "skill": "support", "caller_id": "+13125557000",
                                                    "data": {"ticket": "4711", "name": "Ada Lovelace"}})
        assert booked.status_code == 201
    b = browser_factory(api.url)
    b.sign_in(secret, "/ui/agent")
    b.wait(lambda d: b.text("#my-state") == "Unavailable", what="alice's state")
    b.screenshot("agent-unavailable")
    b.click("#go-available")
    b.wait(lambda d: b.text("#contact-number") == CUSTOMER, timeout=10, what="the offered contact on the page")
    assert "Ada Lovelace" in b.text("#contact-data") and "4711" in b.text("#contact-data")
    offer = until(lambda: rig.invites_to("agent1"), timeout=10, what="the offer's INVITE to alice's phone")[0]
    assert f"Callback {CUSTOMER}" in offer.text
    b.screenshot("agent-offered")
    assert ("token:alice", "agent state", "Unavailable -> Available") in \
        [(a["operator"], a["action"], a["detail"]) for a in rig.store.audit_log()]


def test_the_reports_page_draws_its_chart(api, pg_url, browser_factory):
    store = Store(pg_url)
    try:
        with store.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        store.add_skill("support")
        secret, _ = make_token(store, "wall", "supervisor")
        now = utcnow()
        with store.engine.begin() as conn:
            for i, (hours_ago, wait, outcome) in enumerate([(0, 40, "handled"), (0, 80, "callback_completed"),
                                                            (1, 200, "handled"), (1, None, "abandoned")]):
                arrived = now - timedelta(hours=hours_ago, minutes=1)
                if arrived.date() != now.date():
                    arrived = now - timedelta(seconds=5 + i)
                conn.execute(text(
                    "INSERT INTO contacts (direction, state, outcome, script, skill_id, original_ani, original_dnis, "
                    "ani, dnis, priority_initial, priority_acceleration, priority_max, callback_requested, "
                    "call_delay_sec, attempts, arrived_at, connected_at, ended_at) VALUES ('inbound', 'arrived', "
                    ":o, 't', 1, '+13125550100', '3125557000', '', '', 0, 0, 0, :cb, 0, 0, :a, :c, :a)"),
                    {"o": outcome, "cb": outcome.startswith("callback"), "a": arrived,
                     "c": arrived + timedelta(seconds=wait) if wait else None})
        b = browser_factory(api.url)
        b.sign_in(secret, "/ui/reports")
        b.wait(lambda d: b.css("#wait-chart rect.bar"), what="the chart's bars")
        bars = b.css("#wait-chart rect.bar")
        assert 1 <= len(bars) <= 2 and all(float(r.get_attribute("height")) > 1 for r in bars)
        assert "4" in b.text("#summary") and "handled" in b.text("#outcomes")
        b.screenshot("reports")
    finally:
        store.close()


def test_the_supervisor_page_works_by_keyboard_and_keeps_the_focus_through_live_updates(api, pg_url, browser_factory):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    store = Store(pg_url)
    try:
        with store.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        store.add_skill("support")
        store.add_agent("alice", "user/1001", ["support"])
        secret, _ = make_token(store, "wall", "supervisor")
        with api.client(secret) as c:
            c.post("/api/v1/callbacks", json={"number": "+13125550100", "skill": "support"})
            b = browser_factory(api.url)
            b.sign_in(secret, "/ui/supervisor")
            b.wait(lambda d: b.css("button[aria-label='Select callback 1']"), what="callback 1's row")
            keys = ActionChains(b.driver)
            focused = lambda: b.driver.switch_to.active_element.get_attribute("aria-label") or \
                b.driver.switch_to.active_element.get_attribute("id")                        # noqa: E731
            for _ in range(30):                                   # Tab from the top of the page to the row
                keys.send_keys(Keys.TAB).perform()
                if focused() == "Select callback 1":
                    break
            assert focused() == "Select callback 1"
            # A live update (another booking) re-renders the rows: the focus stays on the same button.
            c.post("/api/v1/callbacks", json={"number": "+13125550101", "skill": "support", "not_before": "+600"})
            b.wait(lambda d: b.css("tr[data-contact='2']"), what="the second booking's row")
            assert focused() == "Select callback 1"
            not_before = b.text("tr[data-contact='2'] td:nth-child(8)")          # its countdown, ticking
            assert re.fullmatch(r"10:00|9:[0-5]\d", not_before), not_before
            keys.send_keys(Keys.ENTER).perform()
            b.wait(lambda d: focused() == "act-priority", what="the priority field")
            keys.send_keys(Keys.BACKSPACE, Keys.BACKSPACE, "42", Keys.TAB, Keys.ENTER).perform()
            until(lambda: store.contact(1).priority_initial == 42, timeout=5, what="priority 42")
            b.wait(lambda d: "priority set" in b.text("#message"), what="the confirmation")
            assert {"act-priority", "act-agent", "act-when"} <= {e.get_attribute("for") for e in b.css("label[for]")}
            b.screenshot("supervisor-acting-by-keyboard")
    finally:
        store.close()


@pytest.mark.freeswitch
def test_the_supervisor_page_shows_a_page_of_the_queue_and_more_on_request(api, pg_url, browser_factory):
    """A queue longer than the page: the first 50 places, the whole count, 50 more on request."""
    store = Store(pg_url)
    try:
        with store.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        store.add_skill("support")
        for n in range(55):
            store.schedule_callback(f"+1312555{n:04d}", "support", None, None)
        secret, _ = make_token(store, "wall", "supervisor")
        b = browser_factory(api.url)
        b.sign_in(secret, "/ui/supervisor")
        b.wait(lambda d: len(b.css("table.queue tbody tr[data-contact]")) == 50, what="the first 50 rows")
        assert "55 callbacks waiting" in b.text("table.queue caption")
        assert b.text("p.more").startswith("Places 1 to 50 of 55 waiting")
        b.click("button[data-key='more-support']")
        b.wait(lambda d: len(b.css("table.queue tbody tr[data-contact]")) == 55, what="all 55 rows")
        assert not b.css("p.more")
        b.screenshot("supervisor-a-longer-queue")
    finally:
        store.close()
