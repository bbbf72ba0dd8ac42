"""The reference SIP proxy (kamailio_conf/) in front of two real switches (issue 18): callers
arriving at Kamailio are spread over both switches by its dispatcher, and the agents' phones,
registered at Kamailio, are reached through it from either switch (their dial strings name the
proxy, not a switch)."""
from __future__ import annotations

import re

import pytest

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
            c = f.a.contact(cid)
            switch = f.fs_a.switch if c.controller_id == "ctl-a" else f.fs_b.switch
            switch.api(f"uuid_kill {c.caller_uuid}")
        for cid in (1, 2):
            assert f.a.wait_state("ended", cid).outcome == "handled"
        # The BYEs went through Kamailio too (Record-Route): the agents' phones saw them.
        until(lambda: sum(1 for m in phones.messages() if not m.sent and m.first_line.startswith("BYE ")
                          and m.at >= f.a.t0) >= 2, timeout=10, what="both agents' phones to get their BYE")
    finally:
        for c in callers:
            c.stop()
