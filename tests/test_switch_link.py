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
