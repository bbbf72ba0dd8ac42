"""The controller's link to FreeSWITCH while the switch cannot be reached."""
from __future__ import annotations

import logging

import gevent

from benchmarks.common import free_port
from esl_cb.config import Settings
from esl_cb.controller.switch import SwitchLink
from esl_cb.sim.server import Simulator

from .fixtures import LAB


def test_a_switch_that_cannot_be_reached_is_said_once_then_its_return(caplog):
    port = free_port()
    link = SwitchLink(Settings(esl=f"127.0.0.1:{port}"), route=lambda event: None)
    caplog.set_level(logging.DEBUG, logger="esl_cb.controller.switch")
    runner = gevent.spawn(link.run)
    sim = None
    try:
        gevent.sleep(1.7)                                   # tries at 0, 0.1, 0.3, 0.7 and 1.5 s
        tries = [r for r in caplog.records if "not reachable" in r.getMessage()]
        assert len(tries) >= 4, [r.getMessage() for r in tries]
        warnings = [r for r in tries if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]     # was: one WARNING a try, forever
        assert "Connection refused" in warnings[0].getMessage()
        sim = Simulator(("127.0.0.1", port), identity=LAB, heartbeat=0).start()
        assert link.ready.wait(timeout=10), "connected once the switch answers"
        back = [r.getMessage() for r in caplog.records if r.getMessage().startswith("connected to FreeSWITCH")]
        assert len(back) == 1 and "s unreachable" in back[0], back
    finally:
        link.close()
        runner.kill()
        if sim is not None:
            sim.stop()


def test_a_hang_up_owed_while_the_switch_was_unreachable_survives_a_restart(pg_url, caplog):
    """A leg we meant to end while the switch could not be asked is hung up by the next run that
    reaches the switch: before, it was held in this process's memory only, and a restart in between
    left (say) an agent parked on the line for good."""
    from esl_cb.controller.switch import StoredHangups
    from esl_cb.db.store import Store

    port = free_port()
    esl = f"127.0.0.1:{port}"
    store = Store(pg_url, "test")
    leg = "5f0c8a57-9a2e-4f58-8d2a-6d7f0e2b9c11"
    first = SwitchLink(Settings(esl=esl), route=lambda event: None)
    first.owed = StoredHangups(store, f"localhost:{port}")        # any spelling of the same switch
    assert first.kill(leg, "NORMAL_CLEARING") is False           # not reachable: owed
    first.close()                                                # the process ends before it is back
    assert store.hangups_owed(esl) == {leg: "NORMAL_CLEARING"}

    sim = Simulator(("127.0.0.1", port), identity=LAB, heartbeat=0).start()
    sim.switch.originate(f"{{origination_uuid={leg}}}user/1001 &park()")
    assert leg in sim.switch.channels
    second = SwitchLink(Settings(esl=esl), route=lambda event: None)
    second.owed = StoredHangups(store, esl)
    runner = gevent.spawn(second.run)
    try:
        assert second.ready.wait(timeout=10), "connected"
        deadline = gevent.Timeout(5, AssertionError("the owed leg was not hung up"))
        with deadline:
            while leg in sim.switch.channels:
                gevent.sleep(0.05)
        assert store.hangups_owed(esl) == {}                     # paid: not asked again
        # Owed by another controller of this switch, which could not reach it: paid at our heartbeat
        # (the switch was never unreachable for us, so no connection of ours would have done it).
        other = "0b7e4c1d-2f3a-4e5b-9c6d-7e8f9a0b1c2d"
        sim.switch.originate(f"{{origination_uuid={other}}}user/1002 &park()")
        store.owe_hangup(esl, other, "NORMAL_CLEARING")
        second.pay_owed()
        with gevent.Timeout(5, AssertionError("the other controller's owed leg was not hung up")):
            while other in sim.switch.channels:
                gevent.sleep(0.05)
        assert store.hangups_owed(esl) == {}
    finally:
        second.close()
        runner.kill()
        sim.stop()
        store.engine.dispose()
