"""Several controllers on one database, duplicates, lost connections, a restarted PostgreSQL."""
from __future__ import annotations

import logging
import subprocess

import gevent
from sqlalchemy import text

from esl_cb.config import Settings
from esl_cb.controller.service import Controller
from esl_cb.domain.queue import Priority
from esl_cb.domain.states import AgentState

from .fixtures import wait_until
from .harness import Harness
from .test_callback_flow import quick_script


def seed_callbacks(store, n: int, first: int = 0) -> list[str]:
    numbers = []
    for i in range(first, first + n):
        number = f"+1312556{i:04d}"
        cid = store.create_contact(f"seed-{i}", number, "3125557000", "seed", number, "3125557000")
        store.queue_contact(cid, "support", Priority(10, 0, 10))
        store.request_callback(cid, number, "+13125557000", 0, "+13125557000", number)
        numbers.append(number)
    return numbers


def test_two_controllers_200_callbacks_20_agents(pg_url):
    h = Harness(pg_url, quick_script(), max_attempts=3, agent_ring_timeout=5, callback_ring_timeout=5)
    second = None
    try:
        settings = Settings(**{**h.settings.__dict__, "controller_id": "second", "listen": "127.0.0.1:0"})
        second = Controller(settings, type(h.store)(pg_url, "second"), quick_script()).start()
        wait_until(second.esl_ready.is_set, what="the second controller")
        numbers = seed_callbacks(h.store, 200)
        for n in numbers:
            h.sim_api(f"endpoint {n} answer 0.05")
        for i in range(20):
            ext = f"20{i:02d}"
            h.store.add_agent(f"agent{i}", f"user/{ext}", ["support"])
            h.sim_api(f"endpoint {ext} answer 0.05 1.5")   # answers, talks 1.5 s, hangs up
            h.store.set_agent_state(f"agent{i}", AgentState.AVAILABLE, list(AgentState))
        h.controller.wake_dispatcher()
        second.wake_dispatcher()
        wait_until(lambda: h.count("SELECT count(*) FROM contacts WHERE state = 'ended'") == 200,
                   timeout=120, interval=0.5, what="all 200 callbacks to end")
        outcomes = h.rows("SELECT outcome, count(*) AS n FROM contacts GROUP BY outcome")
        assert {r["outcome"]: r["n"] for r in outcomes} == {"callback_completed": 200}
        legs = h.sim.switch.originates
        for n in numbers:                               # each customer dialled exactly once
            assert sum(1 for o in legs if o["number"] == n) == 1, n
        by_controller = h.rows("SELECT controller_id, count(*) AS n FROM contacts GROUP BY controller_id")
        assert len(by_controller) == 2, by_controller   # both controllers did work
        # No agent ever held two contacts: the agent legs of one phone never overlap in time.
        for i in range(20):
            ext = f"20{i:02d}"
            spans = sorted((o["t"], h.sim.switch.ended_at[o["uuid"]]) for o in legs if o["number"] == ext)
            for (s1, e1), (s2, _) in zip(spans, spans[1:]):
                assert s2 >= e1, f"agent {ext} rang for a second contact while on a call"
        assert h.count_attempts_per_contact() == {1}
    finally:
        if second is not None:
            second.stop()
        h.close()


def test_duplicate_request_keeps_one_callback_at_the_earlier_place(pg_url, caplog):
    caplog.set_level(logging.INFO, logger="esl_cb")
    h = Harness(pg_url, quick_script())
    try:
        h.call("3125550100", "3125557000", "dtmf 1 1.2")
        first = h.wait_state("callback_queued", 1)
        h.call("3125550100", "3125557000", "dtmf 1 1.2")
        second = h.wait_state("ended", 2)
        assert second.outcome == "merged" and "merged into contact 1" in second.last_error
        kept = h.contact(1)
        assert kept.state == "callback_queued" and kept.queued_at == first.queued_at
        assert h.count("SELECT count(*) FROM contacts WHERE callback_requested AND state <> 'ended'") == 1
        # The returning caller was recognised (CallbackPending=1 for scripts).
        assert any("already has callback contact 1 queued" in r.getMessage() for r in caplog.records)
    finally:
        h.close()


def test_esl_connection_dropped_mid_load(pg_url):
    h = Harness(pg_url, quick_script(), max_attempts=3)
    try:
        numbers = seed_callbacks(h.store, 10)
        for n in numbers:
            h.sim_api(f"endpoint {n} answer 1.0")         # ringing when the connection drops
        for i in range(3):
            h.agent(f"agent{i}", f"30{i:02d}", answer=0.1)
            # Talks well past the customer's answer: a bridge after the agent left is re-dialled
            # by design, which this test is not about.
            h.sim_api(f"endpoint 30{i:02d} answer 0.1 4")
            h.available(f"agent{i}")
        wait_until(lambda: h.count("SELECT count(*) FROM contacts WHERE state = 'dialling'") > 0,
                   what="a dial in progress")
        h.sim.drop_connections()
        wait_until(lambda: h.controller.reconnects >= 1, what="the reconnect")
        wait_until(lambda: h.count("SELECT count(*) FROM contacts WHERE state = 'ended'") == 10, timeout=60,
                   interval=0.2, what="all callbacks to end")
        assert h.count("SELECT count(*) FROM contacts WHERE outcome = 'callback_completed'") == 10
        answered = [o for o in h.sim.switch.originates if o["number"] in numbers
                    and h.sim.switch.answered_at.get(o["uuid"])]
        assert sorted(o["number"] for o in answered) == sorted(numbers)   # each connected once
    finally:
        h.close()


def test_postgresql_restarted_during_load(pg_url):
    h = Harness(pg_url, quick_script(), max_attempts=3)
    try:
        numbers = seed_callbacks(h.store, 8)
        for n in numbers:
            h.sim_api(f"endpoint {n} answer 0.3")
        for i in range(2):
            h.agent(f"agent{i}", f"40{i:02d}", answer=0.1)
            # Agents end their conversations 0.8 s after the bridge (not after their answer): a bridge that
            # waits for the database is late, not cut short.
            h.sim_api(f"endpoint 40{i:02d} answer 0.1 talk 0.8")
            h.available(f"agent{i}")
        wait_until(lambda: h.count("SELECT count(*) FROM contacts WHERE state = 'ended'") >= 2, timeout=30,
                   what="load under way")
        cluster = subprocess.run("ls /etc/postgresql", shell=True, capture_output=True, text=True).stdout.split()[0]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", "restart"], check=True,
                       capture_output=True)
        wait_until(lambda: _count_or_none(h, "SELECT count(*) FROM contacts WHERE state = 'ended'") == 8,
                   timeout=90, interval=0.5, what="all callbacks to end after the restart")
        assert h.count("SELECT count(*) FROM contacts WHERE outcome = 'callback_completed'") == 8
        for n in numbers:
            assert sum(1 for o in h.sim.switch.originates if o["number"] == n
                       and h.sim.switch.answered_at.get(o["uuid"])) == 1, n
    finally:
        h.close()


def _count_or_none(h, sql):
    try:
        return h.count(sql)
    except Exception:
        return None


def test_dead_controllers_contacts_are_taken_over(pg_url):
    """A controller whose heartbeat stopped mid-offer: another takes its contact over after the timeout."""
    from datetime import timedelta

    from esl_cb.db.store import utcnow

    h = Harness(pg_url, quick_script(), heartbeat_timeout=1.0, heartbeat_interval=0.2)
    try:
        h.agent("ann", "1001", answer=0.1)
        h.sim_api("endpoint +13125550100 answer 0.1")
        seed_callbacks(h.store, 1)
        number = h.contact(1).callback_number
        h.sim_api(f"endpoint {number} answer 0.1")
        stale = utcnow() - timedelta(seconds=30)
        with h.store.engine.begin() as conn:       # what a controller of this switch that died mid-offer leaves
            conn.execute(text("INSERT INTO controllers (id, started_at, heartbeat_at, esl) "
                              "VALUES ('dead-1', :t, :t, :esl)"), {"t": stale, "esl": h.settings.esl})
            conn.execute(text("UPDATE agents SET state = 'Offered', contact_id = 1, controller_id = 'dead-1', "
                              "leg_uuid = '00000000-dead-4000-8000-000000000001'"))
            conn.execute(text("UPDATE contacts SET state = 'offered', agent_id = 1, controller_id = 'dead-1', "
                              "agent_leg_uuid = '00000000-dead-4000-8000-000000000001', offered_at = :t"),
                         {"t": stale})
        c = h.wait_connected(1, timeout=15)
        assert c.controller_id == "test"
        assert h.count("SELECT count(*) FROM controllers WHERE id = 'dead-1'") == 0
        assert len([o for o in h.sim.switch.originates if o["number"] == number]) == 1
    finally:
        h.close()


def test_callback_refused_with_on_error_while_the_database_is_away(pg_url, caplog):
    """The caller stays on the line; _ERR says the database is unavailable; nothing is half-stored."""
    from sqlalchemy import create_engine

    h = Harness(pg_url, quick_script())
    try:
        h.call("3125550100", "3125557000", "dtmf 1 1.2")
        h.wait_state("queued", 1)
        good = h.controller.store.engine
        h.controller.store.engine = create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/none",
                                                  connect_args={"connect_timeout": 1})
        try:
            wait_until(lambda: any("database unavailable, callback not stored" in r.getMessage()
                                   for r in caplog.records), timeout=10, what="the Callback action to fail")
        finally:
            h.controller.store.engine = good
        c = h.contact(1)
        assert c.state in ("queued", "offered") and not c.callback_requested
        caller = c.caller_uuid
        assert caller in h.sim.switch.channels                  # still on the line, back in the music
    finally:
        h.close()


def test_switch_restarted_mid_load(pg_url):
    """FreeSWITCH restarts: every channel is gone. The controller reconnects, puts the interrupted
    callbacks back in the queue (nothing dialled twice for one attempt) and finishes them all."""
    from esl_cb.sim.server import Simulator

    from .fixtures import LAB

    h = Harness(pg_url, quick_script(), max_attempts=5)
    try:
        numbers = seed_callbacks(h.store, 6)

        def configure(sim) -> None:
            for n in numbers:
                api_line = f"endpoint {n} answer 1.0"
                assert sim_api(sim, api_line) == "+OK\n"
            for i in range(2):
                assert sim_api(sim, f"endpoint 50{i:02d} answer 0.1 1.5") == "+OK\n"

        configure(h.sim)
        for i in range(2):
            h.store.add_agent(f"agent{i}", f"user/50{i:02d}", ["support"])
            h.available(f"agent{i}")
        wait_until(lambda: h.count("SELECT count(*) FROM contacts WHERE state IN ('dialling', 'connected')") > 0,
                   what="calls in progress")
        port = h.sim.port
        old = h.sim
        old.stop()                                        # the switch goes down with every call on it
        gevent.sleep(0.5)
        h.sim = Simulator(("127.0.0.1", port), identity=LAB, heartbeat=0).start()
        h.sim.switch.socket_target = old.switch.socket_target
        configure(h.sim)
        wait_until(lambda: h.count("SELECT count(*) FROM contacts WHERE state = 'ended'") == 6, timeout=60,
                   interval=0.2, what="all callbacks to end after the switch restart")
        assert h.count("SELECT count(*) FROM contacts WHERE outcome = 'callback_completed'") == 6
        for n in numbers:
            legs = old.switch.originates + h.sim.switch.originates
            attempts = h.rows("SELECT a.leg_uuid FROM callback_attempts a JOIN contacts c ON c.id = a.contact_id "
                              "WHERE c.callback_number = :n", n=n)
            sent = [o for o in legs if o["number"] == n]
            assert len(sent) == len({a["leg_uuid"] for a in attempts} & {o["uuid"] for o in sent})  # one per attempt
            assert len({o["uuid"] for o in sent}) == len(sent)                                         # no uuid reused
    finally:
        h.close()


def sim_api(sim, line: str) -> str:
    from esl_cb.sim import api

    return api.execute(sim.switch, "sim", line)


def test_an_offer_nobody_watches_goes_back_to_the_queue(pg_url):
    """The database committed a claim but its answer never reached us (or the originate never left):
    no watch, no ring. After the ring time the contact gets its place back and the agent is free."""
    h = Harness(pg_url, quick_script(), agent_ring_timeout=1)
    try:
        number = seed_callbacks(h.store, 1, first=900)[0]
        h.store.add_agent("lost", "user/1900", ["support"])
        with h.store.engine.begin() as conn:      # what such a claim leaves behind, offered 30 s ago
            cid = conn.execute(text("SELECT id FROM contacts WHERE callback_number = :n"), {"n": number}).scalar()
            conn.execute(text("UPDATE agents SET state = 'Offered', contact_id = :c, leg_uuid = 'lost-leg', "
                              "state_changed_at = now(), controller_id = :ctl WHERE name = 'lost'"),
                         {"c": cid, "ctl": h.settings.controller_id})
            conn.execute(text("UPDATE contacts SET state = 'offered', agent_id = (SELECT id FROM agents WHERE "
                              "name = 'lost'), agent_leg_uuid = 'lost-leg', offered_at = now() - interval '30 s', "
                              "controller_id = :ctl WHERE id = :c"), {"c": cid, "ctl": h.settings.controller_id})
        # Given back, then offered again on a leg that is really rung.
        wait_until(lambda: h.contact(cid).agent_leg_uuid not in (None, "lost-leg"), timeout=10,
                   what="the contact offered anew")
        # The offer is stored before its originate leaves (and the switch records it a moment later).
        wait_until(lambda: any(o["vars"].get("esl_cb_contact_id") == str(cid) for o in h.sim.switch.originates),
                   timeout=5, what="the new offer's originate at the switch")
        assert h.contact(cid).outcome in (None, "callback_completed")     # not lost, not failed
    finally:
        h.close()
