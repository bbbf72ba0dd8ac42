"""Agents' phones on the real FreeSWITCH with SIPp (issue 20): a phone that REGISTERs is offered, one
that un-REGISTERs (Expires: 0) is not (no INVITE on the wire), and is again once it registers."""
from __future__ import annotations

import gevent
import pytest

from esl_cb.app.phones import PhoneService
from esl_cb.esl.inbound import InboundConnection

from .freeswitch.rig import RealRig, fs_rig, until  # noqa: F401  (fs_rig is a fixture)
from .freeswitch.sipp import register_phone
from .freeswitch.switch import PASSWORD
from .test_real_flows import quick

pytestmark = pytest.mark.freeswitch


@pytest.fixture
def rig(fs_rig, pg_url):  # noqa: F811
    r = RealRig(fs_rig, pg_url, quick(menu_timeout=3), start=False)
    yield r
    r.close()


def _register(rig: RealRig, expires: int = 3600, call_id: str | None = None, cseq: int = 1) -> str:
    fs = rig.fs
    return register_phone(fs.root / "registrations", fs.switch.sip_port, "2001", fs.phones.port, expires=expires,
                          call_id=call_id, cseq=cseq)


def test_a_phone_that_unregisters_is_not_offered_and_is_again_once_it_registers(rig):
    call_id = _register(rig)                     # user 2001's phone: SIPp's test phones (ends in 1: answers)
    rig.store.add_agent("pat", "user/2001", ["support"])
    rig.available("pat")
    rig.start()
    rig.call("+13125550111", key=None)           # a live caller, waiting in the queue
    first = until(lambda: rig.invites_to("2001"), what="the offer to pat's registered phone")
    rig.wait_connected(1)
    rig.api(f"uuid_kill {rig.contact(1).caller_uuid}")
    rig.wait_state("ended", 1)
    until(lambda: rig.store.agent("pat").state == "Available", what="pat free again")

    _register(rig, expires=0, call_id=call_id, cseq=2)          # un-REGISTER
    until(lambda: "pat" in rig.store.unregistered_agents(), what="pat's phone known unregistered")
    rig.call("+13125550112", key=None)
    rig.wait_state("queued", 2)
    for _ in range(4):                           # the dispatcher looks, woken and by its poll: nobody
        rig.controller.wake_dispatcher()
        gevent.sleep(0.5)
    assert rig.invites_to("2001") == first and rig.contact(2).state == "queued"

    _register(rig, call_id="again-2001")
    until(lambda: len(rig.invites_to("2001")) == len(first) + 1, what="the offer once pat's phone registered again")
    rig.wait_connected(2)


def test_a_feature_code_call_with_dtmf_logs_an_agent_in_and_the_presence_event_says_so(rig):
    """*22 from the agent's phone (the rig's dialplan: no trusted caller ID): the agent keys their login
    number and PIN (RFC 2833 from SIPp), is logged in (Available), hears the stock confirmation, and a
    PRESENCE_IN for agent+pat@DOMAIN is fired into the switch (seen on an ESL subscription)."""
    rig.store.add_agent("pat", rig.phones.dial("agent1"), ["support"])
    assert PhoneService(rig.store).set_pin("pat", "1357", "2581") == "2581"
    rig.start()
    seen: list = []
    conn = InboundConnection("127.0.0.1", rig.switch.esl_port, PASSWORD, seen.append, timeout=10)
    conn.connect(["PRESENCE_IN"])
    try:
        caller = rig.fs.caller("2001", key="2581#1357#", key_after=1.5, did="*22")
        rig.callers.append(caller)
        until(lambda: rig.store.agent("pat").state == "Available", timeout=30, what="pat logged in from the phone")
        assert caller.wait(30) == 0                             # the switch hung up after the confirmation
        lamp = until(lambda: [e for e in seen if e.get("from") == "agent+pat@127.0.0.1"], what="pat's presence")
        assert (lamp[-1].get("esl_cb_agent_state"), lamp[-1].get("answer-state")) == ("Available", "terminated")
        audit = rig.rows("SELECT operator, detail FROM audit_log WHERE target = 'pat' AND action = 'agent state'")
        assert [(a["operator"], a["detail"]) for a in audit] == [("phone 2001", "LoggedOut -> Available")]
        played = [line for line in rig.switch.log_text().splitlines() if "ivr-you_are_now_logged_in" in line]
        assert played, "the stock confirmation was not played"
    finally:
        conn.close()


def test_a_wrong_pin_is_refused_audited_and_the_caller_told(rig):
    rig.store.add_agent("pat", rig.phones.dial("agent1"), ["support"])
    PhoneService(rig.store).set_pin("pat", "1357", "2581")
    rig.start()
    caller = rig.fs.caller("2001", key="2581#2468#", key_after=1.5, did="*22")
    rig.callers.append(caller)
    wrong = until(lambda: rig.rows("SELECT operator, detail FROM audit_log WHERE action = 'agent pin wrong'"),
                  timeout=30, what="the wrong PIN audited")
    assert [(a["operator"], a["detail"]) for a in wrong] == [("phone 2001", "1 in a row")]
    until(lambda: "vm-fail_auth" in rig.switch.log_text(), what="the stock 'login incorrect' prompt")
    assert caller.wait(60) == 0                  # asked again, no keys: goodbye, hung up by the switch
    assert rig.store.agent("pat").state == "LoggedOut"
