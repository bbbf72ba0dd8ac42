"""Originates are paced under the switch's sessions-per-second (it refuses, it does not queue)."""
from __future__ import annotations

from esl_cb.controller.pacing import OriginatePacer

from .fixtures import wait_until
from .harness import Harness
from .test_callback_flow import quick_script
from .test_concurrency import seed_callbacks


def test_originate_pacer_spaces_originates_under_the_rate():
    now = [100.0]
    slept = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = OriginatePacer(10, burst=2, clock=lambda: now[0], sleep=sleep)
    sent = []
    for _ in range(12):
        pacer.wait()
        sent.append(now[0])
    assert sent[:2] == [100.0, 100.0]                  # the burst goes at once
    gaps = [b - a for a, b in zip(sent[1:], sent[2:])]
    assert all(abs(g - 0.1) < 1e-9 for g in gaps)      # then one every 1/rate seconds
    for i, t in enumerate(sent):                       # never more than burst + rate in any second
        assert sum(1 for u in sent if t <= u < t + 1.0) <= 2 + 10
    now[0] += 5.0                                      # idle: the bucket refills to the burst, no more
    before = len(slept)
    pacer.wait()
    pacer.wait()
    assert len(slept) == before
    pacer.wait()
    assert len(slept) == before + 1



def _six_offers_at_once(h: Harness) -> None:
    h.sim.switch.sessions_per_second = 3                     # a switch that refuses the fourth session in a second
    for n in seed_callbacks(h.store, 6, first=700):
        h.sim_api(f"endpoint {n} answer 0.05")
    for i in range(6):
        h.agent(f"pace{i}", f"31{i:02d}", answer=5.0)        # they ring for a while: six offers at once
        h.available(f"pace{i}")


def test_controller_paces_its_originates_under_the_switch_limit(pg_url):
    h = Harness(pg_url, quick_script(), originate_rate=2.5)  # one every 0.4 s
    try:
        _six_offers_at_once(h)
        wait_until(lambda: len(h.sim.switch.originates) >= 6, timeout=10, what="six offers")
        sent = sorted(o["t"] for o in h.sim.switch.originates)
        gaps = [b - a for a, b in zip(sent, sent[1:])]
        assert min(gaps) > 0.3, gaps                            # 0.4 s apart, less timer slack
        assert h.sim.switch.refused_over_sps == 0
    finally:
        h.close()


def test_unpaced_originates_are_refused_by_the_switch_and_nothing_is_lost(pg_url):
    h = Harness(pg_url, quick_script(), originate_rate=1000)
    try:
        _six_offers_at_once(h)
        wait_until(lambda: h.sim.switch.refused_over_sps > 0, what="the switch to refuse")
        # Refused for the switch's sake, not the agents': each contact is offered again later.
        wait_until(lambda: len({o["vars"]["esl_cb_contact_id"] for o in h.sim.switch.originates}) == 6,
                   timeout=15, what="every contact offered in the end")
        assert not [a for a in h.store.agents() if a["state"] == "Refused"]
    finally:
        h.close()
