"""Agents' wrap-up, delays after a miss and breaks on the real FreeSWITCH (issue 20), measured on the
wire: SIPp's trace of the agents' phones says when each INVITE reached them, and the order of those
times against the recorded state changes is what is checked (never a timing window)."""
from __future__ import annotations

from datetime import datetime, timezone

import gevent
import pytest

from esl_cb.app import AgentService

from .freeswitch.rig import RealRig, fs_rig, until  # noqa: F401  (fs_rig is a fixture)
from .test_real_flows import CUSTOMER, quick

pytestmark = pytest.mark.freeswitch


@pytest.fixture
def rig(fs_rig, pg_url):  # noqa: F811
    made: list[RealRig] = []

    def make(**settings) -> RealRig:
        r = RealRig(fs_rig, pg_url, quick(), **settings)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


def _epoch(at: datetime) -> float:
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


def _history(r: RealRig, name: str) -> list:
    return r.rows("SELECT from_state, to_state, reason, at FROM agent_state_history WHERE agent_name = :n "
                  "ORDER BY at, id", n=name)


def _adds_up(r: RealRig) -> None:
    """The history of each agent covers the wall time since their first row, no more, no less."""
    rows = r.rows("""SELECT w.agent_name, w.wall, s.total FROM
                       (SELECT agent_name, extract(epoch FROM now() - min(at)) AS wall
                          FROM agent_state_history GROUP BY agent_name) w
                       JOIN (SELECT agent_name, sum(seconds) AS total FROM agent_day_states GROUP BY agent_name) s
                         ON s.agent_name = w.agent_name""")
    assert rows
    for row in rows:
        assert abs(float(row["wall"]) - float(row["total"])) < 0.01, row


def test_the_next_invite_to_an_agent_leaves_after_the_wrap_up_time(rig):
    r = rig()
    r.agent("alice", "agent1")
    AgentService(r.store).set_settings("support", skill=True, wrap_up=3)
    r.available("alice")
    r.call("+13125550201", key=None, hangup_after=4.0)          # talks to alice, hangs up after 4 s
    r.wait_connected(1)
    r.call("+13125550202", key=None, hangup_after=20.0)         # waits meanwhile
    r.wait_state("queued", 2)
    r.wait_state("ended", 1, timeout=15)
    r.wait_connected(2, timeout=20)
    invites = r.invites_to("agent1")
    assert len(invites) == 2
    wrap = next(h for h in _history(r, "alice") if h["to_state"] == "WrapUp")
    assert wrap["from_state"] == "OnCall"
    # On the wire: the second INVITE reached the phone after the wrap-up ended, not before.
    assert invites[1].at >= _epoch(wrap["at"]) + 3.0
    states = [(h["from_state"], h["to_state"]) for h in _history(r, "alice")]
    assert states[-3:] == [("WrapUp", "Available"), ("Available", "Offered"), ("Offered", "OnCall")]
    _adds_up(r)


def test_an_agent_who_rejects_twice_is_not_rung_during_the_delay_then_goes_on_break(rig):
    r = rig()
    r.agent("dave", "agent4")                                      # rejects (603) every time
    AgentService(r.store).set_settings("support", skill=True, reject_delay=3, max_no_answer=2)
    r.call(CUSTOMER, key="1", key_after=0.5)
    queued = r.wait_state("callback_queued")
    r.available("dave")
    until(lambda: r.store.agent("dave").state == "OnBreak", timeout=20, what="dave on break")
    assert r.store.agent("dave").state_reason == "no_answer"
    invites = r.invites_to("agent4")
    assert len(invites) == 2
    rejected = [m for m in r.phones.messages() if m.sent and m.call_id == invites[0].call_id
                and m.first_line.startswith("SIP/2.0 603")]
    assert rejected
    # Not rung during the reject delay: the second INVITE after the first 603 plus the delay.
    assert invites[1].at >= rejected[0].at + 3.0
    history = [(h["from_state"], h["to_state"], h["reason"]) for h in _history(r, "dave")]
    assert ("Offered", "Refused", "rejected") in history and ("Offered", "OnBreak", "no_answer") in history
    c = r.contact()
    assert c.state == "callback_queued" and c.queued_at == queued.queued_at       # its place kept each time
    gevent.sleep(1.0)
    assert len(r.invites_to("agent4")) == 2                       # on break: not rung any more
    _adds_up(r)


def test_a_break_asked_during_a_call_starts_at_its_end(rig):
    r = rig()
    r.agent("erin", "agent1")
    r.available("erin")
    r.call("+13125550203", key=None, hangup_after=5.0)          # the caller ends the call after 5 s
    r.wait_connected(1)
    change = AgentService(r.store).set_agent_state("erin", "break", reason="training")
    assert change.when_call_ends
    r.call("+13125550204", key=None, hangup_after=15.0)         # another caller waits meanwhile
    r.wait_state("queued", 2)
    assert r.store.agent("erin").state == "OnCall"               # the call goes on
    ended = r.wait_state("ended", 1, timeout=15)
    assert ended.outcome == "handled"
    until(lambda: r.store.agent("erin").state == "OnBreak", what="erin on break")
    erin = r.store.agent("erin")
    assert (erin.state_reason, erin.pending_state) == ("training", None)
    last = _history(r, "erin")[-1]
    assert (last["from_state"], last["to_state"], last["reason"]) == ("OnCall", "OnBreak", "training")
    gevent.sleep(1.0)
    assert len(r.invites_to("agent1")) == 1                      # the waiting caller is not offered to her
    assert r.contact(2).state == "queued"
    _adds_up(r)
