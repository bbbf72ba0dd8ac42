"""Switch B alive but unreachable (issue 18's hard case): controller B's event socket to switch B is
cut while SIP and media go on. Two real FreeSWITCH, controller A in this process on switch A,
controller B a real `esl-cb run` reaching switch B through a TCP relay (tests/freeswitch/relay.py)
that the test cuts and restores. The phones' SIPp trace counts every INVITE on the wire.

README 'Running a fleet' has the table these tests hold esl-cb to, state by state."""
from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import text

from .freeswitch.relay import EslRelay
from .freeswitch.rig import until
from .test_real_fleet import X, Y, Fleet, esl_cb, two_switches  # noqa: F401  (the module's two switches)
from .test_real_flows import digits

pytestmark = pytest.mark.freeswitch


class CutFleet(Fleet):
    def __init__(self, rigs, pg_url, tmp_path, **options) -> None:
        if rigs[1].switch.proc.poll() is not None:        # Fleet restarts it: the relay needs its port
            rigs[1].switch.start()
        self.relay = EslRelay(rigs[1].switch.esl_port)
        super().__init__(rigs, pg_url, tmp_path, b_esl_port=self.relay.port, **options)

    def b_log(self) -> str:
        return self.log.read_text()

    def cut(self) -> float:
        """Cut B's event socket and wait until controller B has noticed."""
        lost_before = self.b_log().count("lost the ESL connection")
        self.relay.cut()
        until(lambda: self.b_log().count("lost the ESL connection") > lost_before, timeout=10,
              what=f"controller B to notice the cut ({self.log})")
        return time.time()

    def restore(self) -> None:
        """Let B's event socket through again and wait until controller B has reconciled."""
        connected_before = self.b_log().count("connected to FreeSWITCH")
        self.relay.restore()
        until(lambda: self.b_log().count("connected to FreeSWITCH") > connected_before, timeout=15,
              what=f"controller B to reconnect ({self.log})")

    def on_b(self, uuid: str) -> bool:
        """Asked of switch B itself (the test's own ESL connection, not through the relay)."""
        return self.fs_b.switch.api(f"uuid_exists {uuid}").strip() == "true"

    def bridged_on_b(self, contact_id: int):
        c = self.a.wait_state("connected", contact_id, timeout=25)
        until(lambda: f'"Other-Leg-Unique-ID":"{c.agent_leg_uuid}"' in
              self.fs_b.switch.api(f"uuid_dump {c.callback_leg_uuid} json"),
              timeout=10, what=f"contact {contact_id}'s legs bridged on B")
        return c

    def legs(self, contact_id: int) -> list:
        with self.a.store.engine.connect() as conn:
            return conn.execute(text("SELECT uuid, kind, ended_at, hangup_cause FROM legs WHERE contact_id = :c"),
                                {"c": contact_id}).all()

    def endings(self, contact_id: int) -> list[str]:
        """Every stored move of the contact to 'ended' that controller B logged."""
        return re.findall(rf"contact {contact_id} \S+ -\[.*?\]-> ended", self.b_log())

    def close(self) -> None:
        super().close()
        self.relay.close()


@pytest.fixture
def cut_fleet(two_switches, pg_url, tmp_path):  # noqa: F811
    made = []

    def make(**options) -> CutFleet:
        made.append(CutFleet(two_switches, pg_url, tmp_path, **options))
        return made[-1]
    yield make
    for f in made:
        f.close()


# The longest esl-cb waits before it acts on a switch that does not answer (an offer rung there: the
# agent ring time + 5 s, looked at every 5 poll intervals, at least every second). A cut held this
# long has let every such rule fire: none may touch a connected callback.
def hold_past_the_lost_switch_rules(b_ring: int) -> None:
    time.sleep(b_ring + 5 + 2)


@pytest.mark.parametrize("ends", ["after the cut", "during the cut"])
def test_esl_cut_while_a_callback_is_connected_on_b_nothing_is_redialled_and_its_outcome_recorded_once(
        cut_fleet, ends):
    b_ring = 5
    f = cut_fleet(b_ring_timeout=b_ring)
    f.start_a()
    esl_cb("switch", "drain", "fs-a", "--db", f.db)       # every leg goes through B
    until(lambda: f.a.controller.dispatcher.draining, timeout=5, what="A to see its switch draining")
    f.agent("ann", "ann1")
    f.call_b(X)
    f.a.wait_state("callback_queued", 1, timeout=20)
    f.available("ann")
    x = f.bridged_on_b(1)
    assert x.controller_id == "ctl-b"
    f.a.call(Y, key="1", key_after=0.5)                 # waits for ann, the only agent
    f.a.wait_state("callback_queued", 2, timeout=20)

    cut_at = f.cut()
    if ends == "during the cut":
        f.fs_b.switch.api(f"uuid_kill {x.callback_leg_uuid}")       # the customer hangs up meanwhile
        until(lambda: not f.on_b(x.callback_leg_uuid), timeout=5, what="X's leg gone on B")
    hold_past_the_lost_switch_rules(b_ring)
    # While B cannot be asked: the conversation is held as it was, ann is offered nothing.
    assert f.a.contact(1).state == "connected"
    assert f.a.contact(2).state == "callback_queued"
    assert len(f.invites_to("ann1")) == 1
    assert len(f.invites_to(digits(X))) == 1
    if ends == "after the cut":
        assert f.on_b(x.callback_leg_uuid) and f.on_b(x.agent_leg_uuid), "the media were cut with the ESL"

    f.restore()
    if ends == "after the cut":
        assert f.a.contact(1).state == "connected"
        f.fs_b.switch.api(f"uuid_kill {x.callback_leg_uuid}")
    done = f.a.wait_state("ended", 1, timeout=20)
    assert done.outcome == "callback_completed"
    assert done.attempts == 1
    until(lambda: not f.on_b(x.agent_leg_uuid), timeout=10, what="ann's leg hung up on B")
    assert {leg.kind for leg in f.legs(1)} >= {"agent", "callback"}
    until(lambda: all(leg.ended_at is not None for leg in f.legs(1)), timeout=10,
          what="every billing leg of X with its end time")       # written as each leg's hangup completes
    assert len(f.endings(1)) == 1, f.endings(1)
    if ends == "during the cut":      # its end was not heard: billed as ended when B answered again
        assert [leg.hangup_cause for leg in f.legs(1) if leg.uuid == x.callback_leg_uuid] == ["LOST_EVENTS"]

    # ann is free now, and only now: the waiting callback is hers.
    y = f.bridged_on_b(2)
    invites = f.invites_to("ann1")
    assert len(invites) == 2 and invites[1].at > cut_at
    f.fs_b.switch.api(f"uuid_kill {y.callback_leg_uuid}")
    assert f.a.wait_state("ended", 2, timeout=20).outcome == "callback_completed"
    assert len(f.invites_to(digits(X))) == 1 and len(f.invites_to(digits(Y))) == 1
    assert f.endings(1) == f.endings(1)[:1]


def test_esl_cut_a_callback_in_calldelaysec_and_an_offer_ringing_on_b_go_through_a(cut_fleet):
    """README's table, the other side: what esl-cb does without switch B. The callback accepted on B
    (CallDelaySec) goes back to the queue at its due time, not counted, and is dialled through A; the
    offer ringing an agent through B goes back after the ring time; each customer is dialled once; the
    agent who accepted on B is offered again elsewhere, and her leg on B is hung up once B answers."""
    delay, b_ring = 8, 8
    f = cut_fleet(delay=delay, b_ring_timeout=b_ring)
    f.start_a()
    esl_cb("switch", "drain", "fs-a", "--db", f.db)       # B takes both callbacks
    until(lambda: f.a.controller.dispatcher.draining, timeout=5, what="A to see its switch draining")
    for name, phone in (("ann", "ann1"), ("carl", "carl3"), ("dan", "dan1"), ("eve", "eve1")):
        f.agent(name, phone)
    f.call_b(X)
    f.a.wait_state("callback_queued", 1, timeout=20)
    f.call_b(Y)
    f.a.wait_state("callback_queued", 2, timeout=20)
    f.available("ann")                                  # X: accepted, in CallDelaySec on B
    x = f.a.wait_state("accepted", 1, timeout=20)
    assert x.controller_id == "ctl-b"
    f.available("carl")                                 # Y: ringing carl's phone (never answers) on B
    f.a.wait_state("offered", 2, timeout=20)
    until(lambda: f.invites_to("carl3"), timeout=10, what="carl's phone to ring")

    cut_at = f.cut()
    esl_cb("switch", "undrain", "fs-a", "--db", f.db)
    f.available("dan")
    f.available("eve")
    for cid in (1, 2):
        c = f.a.wait_state("connected", cid, timeout=delay + b_ring + 30)
        assert c.controller_id == "ctl-a"
    customers = f.invites_to(digits(X)) + f.invites_to(digits(Y))
    for m in sorted(customers, key=lambda m: m.at):
        print(f"\n  {m.first_line.split()[1]} at cut+{m.at - cut_at:.2f}s through {f.through(m)}")
    assert len(f.invites_to(digits(X))) == 1 and len(f.invites_to(digits(Y))) == 1
    assert {f.through(m) for m in customers} == {"A"}
    assert f.on_b(x.agent_leg_uuid), "ann's leg on B should still be up: nobody could hang it up"

    f.restore()
    until(lambda: not f.on_b(x.agent_leg_uuid), timeout=10,
          what=f"ann's stale leg {x.agent_leg_uuid} hung up once B answers again")
    until(lambda: [leg.ended_at is not None for leg in f.legs(1) if leg.uuid == x.agent_leg_uuid] == [True],
          timeout=10, what="ann's stale leg billed with its end time")
    for cid in (1, 2):
        f.hang_up(cid)
        done = f.a.wait_state("ended", cid, timeout=20)
        assert done.outcome == "callback_completed"
        assert done.attempts == 1                       # the dial B could not send was not counted
    assert len(f.invites_to(digits(X))) == 1 and len(f.invites_to(digits(Y))) == 1
