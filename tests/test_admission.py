"""Admission control (issue 18): past the controller's knee, new callers wait for their first prompt;
a due dial and an agent's answer do not wait behind them. No timing asserts: what waited is counted
(the metric, the order of what the simulator and the database saw)."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry

from esl_cb.controller.admission import Admission
from esl_cb.controller.metrics import Metrics

from .fixtures import wait_until
from .harness import Harness
from .test_callback_flow import quick_script

FLOOD = 30


def busy(seconds: float) -> None:
    """Hold the event loop (CPU work, no yield), as a flood of callers does."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_the_sampler_finds_a_late_event_loop():
    import gevent

    class Recording(Admission):
        def let_in(self) -> int:
            seen.append(self.lag)
            return super().let_in()
    seen: list[float] = []
    admission = Recording(max_lag=0.02).start()
    try:
        wait_until(lambda: seen, 1, what="a first sample")
        busy(0.2)                              # the loop runs 200 ms late, as under a flood of callers
        gevent.sleep(0)
        wait_until(lambda: max(seen) >= 0.1, 1, what="the sampler to see the loop late")
    finally:
        admission.stop()


def test_a_late_event_loop_holds_new_callers_and_lets_them_in_oldest_first_once_on_time():
    import gevent

    admission = Admission(max_lag=0.02, max_wait=30, rate=99)     # its sampler not started: we say
    admission.lag = 1.0
    order: list[int] = []

    def caller(i: int) -> None:
        admission.admit()
        order.append(i)
    greenlets = [gevent.spawn(caller, i) for i in range(5)]
    gevent.sleep(0.05)
    assert order == [] and len(admission.waiting) == 5 and admission.delayed == 5
    assert admission.let_in() == 0             # still late: nobody, and the rate halves
    assert admission.rate == 49.5
    admission.rate = 99
    admission.lag = 0.0
    admission.let_in()
    gevent.sleep(0)
    assert order == [0, 1]                     # on time: 100/s, two per 20 ms tick, the oldest first
    while admission.waiting:
        admission.let_in()
    gevent.joinall(greenlets, timeout=5)
    assert order == [0, 1, 2, 3, 4]
    assert admission.admitted_late == 0
    assert admission.admit() == 0.0 and admission.delayed == 5      # nobody waiting, on time: at once


def test_admission_never_holds_a_caller_past_max_wait():
    admission = Admission(max_lag=0.02, max_wait=0.2)       # no sampler: the loop stays "late"
    admission.lag = 1.0
    admission.admit()
    assert admission.delayed == 1 and admission.admitted_late == 1 and not admission.waiting


def test_a_due_dial_and_an_agents_answer_do_not_wait_behind_a_flood_of_arrivals(pg_url):
    h = Harness(pg_url, quick_script(delay="1"))
    try:
        metrics = Metrics(h.controller, CollectorRegistry())
        h.controller.metrics = metrics
        h.agent("ann", "1001", answer=0.2)
        h.call("3125550100", "3125557000", "dtmf 1 1.5")
        h.wait_state("callback_queued", 1)

        admission = h.controller.admission
        admission.stop()                       # the loop is "late" from here until the test says so
        admission.lag = 1.0
        for i in range(FLOOD):
            h.call(f"31255502{i:02d}", "3125557000")
        wait_until(lambda: len(admission.waiting) == FLOOD, 10, what="the flood to wait for admission")

        h.available("ann")                     # her answer is acted on, and her customer dialled at the due time
        wait_until(lambda: h.originates_to("+13125550100"), 15, what="the due dial")
        wait_until(lambda: h.contact(1).state in ("dialling", "connected"), 5, what="'dialling' stored")
        assert h.count("SELECT count(*) FROM contacts") == 1, "a held caller started before the due dial"
        assert len(admission.waiting) == FLOOD
        assert metrics.registry.get_sample_value("esl_cb_admission_delayed_total") == FLOOD
        assert metrics.registry.get_sample_value("esl_cb_admission_waiting") == FLOOD

        admission.lag = 0.0                    # on time again: they all start, and hear their prompts
        admission.start()
        wait_until(lambda: h.count("SELECT count(*) FROM contacts") == FLOOD + 1, 20, what="the held callers")
        assert metrics.registry.get_sample_value("esl_cb_admission_waiting") == 0
        assert admission.admitted_late == 0
    finally:
        h.close()
