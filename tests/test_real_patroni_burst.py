"""A Patroni failover during a burst of callbacks on the real switch (issue 18; the simulator's version
is tests/test_patroni_failover.py): a real FreeSWITCH, SIPp phones, one controller on the pair's
multi-host URL, the primary's postmaster SIGKILLed with callbacks in flight. None lost (each ends
completed, with one attempt), none doubled (each customer's INVITE once on the wire)."""
from __future__ import annotations

import pytest

from .freeswitch.rig import RealRig, fs_rig, until  # noqa: F401  (the module's switch)
from .test_patroni_failover import IN_FLIGHT, patroni  # noqa: F401  (the module's Patroni pair)
from .test_real_flows import digits

pytestmark = [pytest.mark.freeswitch, pytest.mark.patroni]

CALLBACKS, AGENTS = 12, 4


def seed(store, n: int) -> list[str]:
    """Callbacks waiting, CallDelaySec 0; each customer's number ends in 7: the phone answers and hangs
    up 4 s later (tests/freeswitch/sipp/phones.xml), which ends the conversation."""
    from esl_cb.domain.queue import Priority
    numbers = []
    for i in range(n):
        number = f"+1312556{i:03d}7"
        cid = store.create_contact(f"seed-{i}", number, "3125557000", "seed", number, "3125557000")
        store.queue_contact(cid, "support", Priority(10, 0, 10))
        store.request_callback(cid, number, "+13125557000", 0, "+13125557000", number)
        numbers.append(number)
    return numbers


def test_patroni_failover_during_a_burst_of_callbacks_on_the_real_switch(patroni, fs_rig):  # noqa: F811
    pair = patroni
    pair.wait_ready()
    url = pair.url("eslcb", first=pair.leader(), connect_timeout="3")
    rig = RealRig(fs_rig, url, agent_ring_timeout=8, callback_ring_timeout=8)
    looker = type(rig.store)(url, "looker")

    def count(sql: str) -> int | None:
        try:
            with looker.engine.connect() as conn:
                return conn.exec_driver_sql(sql).scalar()
        except Exception:                       # the database fails over under the test's feet too
            return None
    try:
        numbers = seed(rig.store, CALLBACKS)
        for i in range(AGENTS):
            rig.agent(f"agent{i}", f"pat{i}1", available=True)
        until(lambda: (count("SELECT count(*) FROM contacts WHERE state = 'ended'") or 0) >= CALLBACKS // 3,
              timeout=90, what="a third of the burst done")
        in_flight = count(f"SELECT count(*) FROM contacts WHERE state IN {IN_FLIGHT}")
        old, at = pair.failover()
        new = pair.wait_leader_other_than(old)
        until(lambda: count("SELECT count(*) FROM contacts WHERE state = 'ended'") == CALLBACKS, timeout=180,
              what=f"all {CALLBACKS} callbacks to end after the failover")
        with looker.engine.connect() as conn:
            outcomes = dict(conn.exec_driver_sql("SELECT outcome, count(*) FROM contacts GROUP BY outcome").all())
            attempts = dict(conn.exec_driver_sql("SELECT contact_id, count(*) FROM callback_attempts "
                                                 "GROUP BY contact_id").all())
        assert outcomes == {"callback_completed": CALLBACKS}, outcomes
        assert sorted(attempts.values()) == [1] * CALLBACKS, attempts
        dialled = {n: len(rig.invites_to(digits(n))) for n in numbers}
        assert set(dialled.values()) == {1}, dialled
        assert in_flight, "the primary was killed with nothing in flight: the test proved nothing"
        assert pair.leader() is new and new is not old
        print(f"\nfailover {old.name} -> {new.name} with {in_flight} callbacks in flight: {CALLBACKS} completed, "
              f"each customer dialled once on the wire")
    finally:
        looker.close()
        rig.close()
