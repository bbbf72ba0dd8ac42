"""Switches as data and a switch's limits shared by its controllers (issue 18), on the simulator and a
real PostgreSQL."""
from __future__ import annotations

import gevent
import pytest
from click.testing import CliRunner

from cli import main
from esl_cb.config import Settings
from esl_cb.controller.service import Controller
from esl_cb.db.store import NotFound, StaleState, Store

from .fixtures import wait_until
from .harness import Harness
from .test_callback_flow import quick_script
from .test_concurrency import seed_callbacks


def test_switches_registered_listed_drained_and_removed(pg_url):
    store = Store(pg_url)
    runner = CliRunner()
    try:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM switches")
        out = runner.invoke(main, ["switch", "add", "fs-a", "--esl", "10.0.0.11:8021", "--sessions-per-second", "30",
                                   "--ports", "60", "--db", pg_url])
        assert out.exit_code == 0, out.output
        again = runner.invoke(main, ["switch", "add", "fs-a", "--esl", "10.0.0.12:8021", "--db", pg_url])
        assert again.exit_code == 1 and "[wrong_state]" in again.output and "registered already" in again.output
        bad = runner.invoke(main, ["switch", "add", "fs-b", "--esl", "10.0.0.12:8021", "--ports", "0", "--db", pg_url])
        assert bad.exit_code != 0 and "voice_ports must be at least 1" in bad.output
        assert runner.invoke(main, ["switch", "drain", "fs-a", "--db", pg_url]).output.strip() == "switch fs-a: up -> draining"
        listed = runner.invoke(main, ["switch", "list", "--json", "--db", pg_url])
        [row] = __import__("json").loads(listed.output)
        assert (row["name"], row["state"], row["sessions_per_second"], row["voice_ports"]) == ("fs-a", "draining", 30, 60)
        with pytest.raises(NotFound):
            store.set_switch_state("fs-z", "draining")
        assert runner.invoke(main, ["switch", "remove", "fs-a", "--db", pg_url]).exit_code == 0
        assert store.switches() == []
    finally:
        store.close()


def test_a_switch_with_calls_in_the_air_is_not_removed(pg_url):
    h = Harness(pg_url, quick_script())
    try:
        h.store.add_switch("lab", h.settings.esl)
        h.agent("ann", "1001", answer=0.1)
        h.sim_api("endpoint +13125560000 answer 0.1")
        seed_callbacks(h.store, 1)
        h.available("ann")
        h.wait_connected()
        with pytest.raises(StaleState, match="drain it"):
            h.store.remove_switch("lab")
    finally:
        h.close()


def test_two_controllers_on_one_switch_stay_under_its_sessions_per_second_together(pg_url):
    """Counted at the switch: FreeSWITCH refuses every originate over its sessions-per-second at once.
    Each controller alone would pace at 20/s (the default --originate-rate); sharing a switch of 10
    they stay under 10 in every second, and nothing is refused."""
    h = Harness(pg_url, quick_script(), heartbeat_interval=0.3)
    b = None
    try:
        h.sim.switch.sessions_per_second = 10
        h.store.add_switch("lab", h.settings.esl, sessions_per_second=10)
        b = Controller(Settings(**{**h.settings.__dict__, "controller_id": "b", "listen": "127.0.0.1:0"}),
                       Store(pg_url, "b"), quick_script()).start()
        wait_until(lambda: h.controller.fleet.share and h.controller.fleet.share.controllers == 2
                   and b.fleet.share and b.fleet.share.controllers == 2, 10, what="both to see they share the switch")
        for i in range(40):
            h.agent(f"agent{i}", f"40{i:02d}", answer=3)       # each offer rings 3 s: 40 originates in a burst
        numbers = seed_callbacks(h.store, 40)
        for i in range(40):
            h.available(f"agent{i}")
        b.wake_dispatcher()
        wait_until(lambda: len([o for o in h.sim.switch.originates if o["number"].startswith("40")]) >= 40, 30,
                   what="every agent rung")
        per_second: dict[int, int] = {}
        for o in h.sim.switch.originates:
            per_second[int(o["t"])] = per_second.get(int(o["t"]), 0) + 1
        assert max(per_second.values()) <= 10, per_second
        assert h.sim.switch.refused_over_sps == 0
        assert h.controller.backoff.total_refusals == 0 and b.backoff.total_refusals == 0
        assert {c for c in (h.contact(i).controller_id for i in range(1, 41))} == {"test", "b"}   # both offered
        assert len(numbers) == 40
    finally:
        if b is not None:
            b.stop()
        h.close()


def test_a_draining_switch_offers_nothing_new_and_its_call_finishes(pg_url):
    h = Harness(pg_url, quick_script(), heartbeat_interval=0.3)
    try:
        h.store.add_switch("lab", h.settings.esl)
        h.agent("ann", "1001", answer=0.1)
        h.agent("bob", "1002", answer=0.1)
        seed_callbacks(h.store, 2)
        h.available("ann")
        first = h.wait_connected(1)
        h.store.set_switch_state("lab", "draining")
        wait_until(lambda: h.controller.dispatcher.draining, 5, what="the controller to see the drain")
        h.available("bob")
        gevent.sleep(1.0)                              # a negative check: nothing is offered while draining
        assert h.contact(2).state == "callback_queued" and not h.originates_to("1002")
        assert h.contact(1).state == "connected"       # the call in the air goes on
        h.sim_api(f"hangup {first.callback_leg_uuid}")
        assert h.wait_state("ended", 1).outcome == "callback_completed"
        assert h.store.agent("ann").state == "Available" and h.contact(2).state == "callback_queued"
        h.store.set_switch_state("lab", "up")
        h.wait_connected(2, timeout=10)
    finally:
        h.close()


def test_a_lost_switchs_ringing_offer_goes_back_and_another_switch_dials_the_customer_once(pg_url):
    """Switch A is gone (its controller cannot reach it) while an agent's phone rings through it: after
    the ring time the offer goes back to the queue, not counted, and the controller of switch B offers
    it and dials the customer through B. Nobody is dialled twice."""
    from esl_cb.sim.server import Simulator

    from .fixtures import LAB

    h = Harness(pg_url, quick_script())
    sim_b = Simulator(("127.0.0.1", 0), identity=LAB, heartbeat=0).start()
    b = None
    try:
        h.agent("ann", "1001", answer=30)                      # rings on switch A for ever
        seed_callbacks(h.store, 1)
        number = h.contact().callback_number
        h.available("ann")
        offered = h.wait_state("offered")
        assert offered.controller_id == "test"
        h.sim.stop()                                           # switch A is gone
        assert api_ok(sim_b, "endpoint 1001 answer 0.1") and api_ok(sim_b, f"endpoint {number} answer 0.2")
        b = Controller(Settings(**{**h.settings.__dict__, "controller_id": "b", "listen": "127.0.0.1:0",
                                   "esl": f"127.0.0.1:{sim_b.port}"}), Store(pg_url, "b"), quick_script()).start()
        sim_b.switch.socket_target = ("127.0.0.1", b.listen_port)
        back = h.wait_state("callback_queued", timeout=h.settings.agent_ring_timeout + 15)
        assert back.attempts == 0
        b.wake_dispatcher()
        connected = h.wait_state("connected", timeout=15)
        assert connected.controller_id == "b"
        assert len([o for o in sim_b.switch.originates if o["number"] == number]) == 1
        assert not [o for o in h.sim.switch.originates if o["number"] == number]
    finally:
        if b is not None:
            b.stop()
        sim_b.stop()
        h.close()


def api_ok(sim, line: str) -> bool:
    from esl_cb.sim import api
    return api.execute(sim.switch, "sim", line) == "+OK\n"
