"""The reference SIP proxy (kamailio_conf/) in front of two real switches (issue 18): callers
arriving at Kamailio are spread over both switches by its dispatcher, and the agents' phones,
registered at Kamailio, are reached through it from either switch (their dial strings name the
proxy, not a switch)."""
from __future__ import annotations

import re
import time

import pytest

from gevent import sleep as gevent_sleep

from .freeswitch.kamailio import Kamailio, require_kamailio
from .freeswitch.rig import until
from .freeswitch.sipp import Caller
from .test_real_fleet import Fleet, two_switches  # noqa: F401  (two_switches: a fixture)

pytestmark = pytest.mark.freeswitch

X, Y = "+13125550491", "+13125550501"


def vias(message) -> list[int]:
    """The ports of a SIP message's Via headers, top first."""
    return [int(p) for p in re.findall(r"^Via:\s*SIP/2.0/UDP\s+[^:;\s]+:(\d+)", message.text, re.M | re.I)]


@pytest.fixture
def topology(two_switches, pg_url, tmp_path):  # noqa: F811
    require_kamailio()
    fleet = Fleet(two_switches, pg_url, tmp_path)
    kam = None
    try:
        kam = Kamailio(tmp_path / "kamailio", [fleet.fs_a.switch.sip_port, fleet.fs_b.switch.sip_port])
        yield fleet, kam
    finally:
        if kam is not None:
            kam.stop()
        fleet.close()


def test_callers_through_kamailio_reach_both_switches_and_registered_agents_are_reached_from_either(
        topology, tmp_path):
    f, kam = topology
    f.start_a()
    phones = f.fs_a.phones
    for name in ("ann1", "bob1"):
        kam.register(name, phones.port)
        f.a.store.add_agent(name, kam.dial(name), ["support"])
        f.available(name)
    registered = kam.rpc("ul.dump")
    assert "ann1" in registered and "bob1" in registered and f"127.0.0.1:{phones.port}" in registered, registered
    callers = [Caller(tmp_path / "callers", kam.port, ani, "3125557000", key=None, name=f"via-kam{i}")
               for i, ani in enumerate((X, Y))]
    try:
        for cid in (1, 2):
            f.a.wait_state("connected", cid, timeout=25)        # live callers, bridged to an agent
        owners = {f.a.contact(cid).controller_id for cid in (1, 2)}
        assert owners == {"ctl-a", "ctl-b"}, owners               # one caller on each switch
        invites = f.invites_to("ann1") + f.invites_to("bob1")
        assert len(invites) == 2
        a_port, b_port = f.fs_a.switch.sip_port, f.fs_b.switch.sip_port
        # Each agent's INVITE came through Kamailio (top Via), sent by a switch (the next one): one by each.
        assert {vias(m)[0] for m in invites} == {kam.port}
        assert sorted(vias(m)[1] for m in invites) == sorted([a_port, b_port])
        for cid in (1, 2):
            # 'connected' is stored (and the legs' Other-Leg variables set) before the caller leaves its
            # menu and the bridge takes: hang up only once the switch lists the pair as bridged
            # (a caller gone in between leaves the agent's leg up: tests/test_real_fleet.py).
            c = f.a.contact(cid)
            switch = f.fs_a.switch if c.controller_id == "ctl-a" else f.fs_b.switch
            until(lambda: c.agent_leg_uuid in switch.api("show bridged_calls"), timeout=8,
                  what=f"caller {cid} ({c.controller_id}) bridged to its agent")
            switch.api(f"uuid_kill {c.caller_uuid}")
        for cid in (1, 2):
            assert f.a.wait_state("ended", cid).outcome == "handled"
        # The BYEs went through Kamailio too (the phones kept its Record-Route), each answered at once.
        byes = until(lambda: (lambda b: b if len({m.call_id for m in b}) == 2 else None)(
            [m for m in phones.messages() if not m.sent and m.first_line.startswith("BYE ") and m.at >= f.a.t0]),
            timeout=10, what="both agents' phones to get their BYE")
        assert {vias(m)[0] for m in byes} == {kam.port}, [m.text for m in byes]
        gevent_sleep(2)                                          # a lost 200 OK would be retransmitted by now
        byes = [m for m in phones.messages() if not m.sent and m.first_line.startswith("BYE ") and m.at >= f.a.t0]
        assert len(byes) == 2, f"{len(byes)} BYEs for 2 calls: a 200 OK did not get back to the switch"
    finally:
        for c in callers:
            c.stop()


def test_a_switch_killed_behind_kamailio_callers_go_to_the_other(topology, tmp_path):
    """SIGKILL of switch B: a caller sent to B times out there (tm's fr_timer, 5 s) and goes to A
    (failure_route: ds_next_dst); the OPTIONS probe marks B inactive, and later callers go to A at once."""
    f, kam = topology
    f.start_a()
    phones = f.fs_a.phones
    for name in ("ann1", "bob1"):
        kam.register(name, phones.port)
        f.a.store.add_agent(name, kam.dial(name), ["support"])
        f.available(name)
    f.fs_b.switch.proc.kill()
    f.fs_b.switch.proc.wait(5)
    killed_at = time.time()
    callers = []
    try:
        callers.append(Caller(tmp_path / "callers", kam.port, X, "3125557000", key=None, name="after-kill0"))
        first = f.a.wait_state("connected", 1, timeout=25)
        first_at = time.time()
        until(lambda: re.search(rf"sip:127\.0\.0\.1:{f.fs_b.switch.sip_port}\b.*?FLAGS: I",
                                kam.rpc("dispatcher.list"), re.S), timeout=20,
              what="Kamailio's OPTIONS probe to mark switch B inactive")
        marked_at = time.time()
        callers.append(Caller(tmp_path / "callers", kam.port, Y, "3125557000", key=None, name="after-kill1"))
        sent = time.time()
        second = f.a.wait_state("connected", 2, timeout=25)
        second_at = time.time()
        assert first.controller_id == second.controller_id == "ctl-a"
        print(f"\nB killed: first caller connected after {first_at - killed_at:.2f}s, B marked inactive at "
              f"kill+{marked_at - killed_at:.2f}s, the next caller connected {second_at - sent:.2f}s after calling")
        assert second_at - sent < 5, "a caller after B was marked inactive still waited for B"
        for cid in (1, 2):
            f.fs_a.switch.api(f"uuid_kill {f.a.contact(cid).caller_uuid}")
            assert f.a.wait_state("ended", cid).outcome == "handled"
    finally:
        for c in callers:
            c.stop()
