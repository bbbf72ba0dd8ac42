"""Toll fraud and strangers (issue 13), end to end on the simulator and the database: refused
numbers, rate limits shared by controllers, a policy tightened after the request, overrides, the
outbound-socket allow list and the audit log."""
from __future__ import annotations

import logging
import socket
import time

import gevent
import pytest
from click.testing import CliRunner

from cli import main
from esl_cb.db.store import PolicyRefused, Store
from esl_cb.domain.policy import RateLimits
from esl_cb.domain.queue import Priority
from esl_cb.domain.states import AgentState
from esl_cb.esl.outbound import CallServer

from .fixtures import wait_until
from .harness import TABLES, Harness
from .test_callback_flow import quick_script


@pytest.fixture
def store(pg_url):
    s = Store(pg_url, "test")
    with s.engine.begin() as conn:
        from sqlalchemy import text
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    yield s
    s.close()


def _request(store: Store, number: str, skill: str, ani: str = "+13125550999", limits=RateLimits(3, 0)) -> int:
    cid = store.create_contact(f"call-{time.monotonic_ns()}", ani, "3125557000", "t", ani, "3125557000")
    store.queue_contact(cid, skill, Priority(0, 0, 0))
    return store.request_callback(cid, number, "+13125557000", 0, "+13125557000", number, limits=limits)


def test_a_premium_rate_caller_gets_on_error_and_stays_on_the_line(pg_url, caplog):
    h = Harness(pg_url, quick_script())
    try:
        caplog.set_level(logging.WARNING, logger="esl_cb.controller.guard")
        h.agent("ann", "1001")
        caller = h.call("9005550100", "3125557000", "dtmf 1 1.2")       # the ANI is a premium-rate number
        wait_until(lambda: h.rows("SELECT * FROM policy_refusals"), what="the refusal")
        gevent.sleep(0.5)
        c = h.contact()
        assert c.state == "queued" and not c.callback_requested          # OnError: back to the music, still queued
        assert caller in h.sim.switch.channels                           # the caller stays on the line
        row = h.rows("SELECT * FROM policy_refusals")[0]
        assert (row["contact_id"], row["number"], row["stage"], row["rule"]) == (1, "+19005550100", "request", "type")
        assert [r for r in caplog.records if "contact 1" in r.getMessage() and "premium-rate" in r.getMessage()]
        h.available("ann")                                               # a live caller is still served
        h.wait_connected(timeout=10)
        assert h.originates_to("+19005550100") == []
    finally:
        h.close()


def test_rate_limit_per_number_is_shared_by_controllers(store, pg_url):
    """Ten requests for one number at once, through two stores (two controllers), different skills
    so none merges: exactly three are stored; the others are refused and recorded."""
    other = Store(pg_url, "second")
    try:
        outcomes: list[str] = []

        def one(i: int) -> None:
            try:
                _request(store if i % 2 else other, "+13125550150", f"skill{i}")
                outcomes.append("stored")
            except PolicyRefused as e:
                assert e.rule == "per_number" and "+13125550150" in str(e)
                outcomes.append("refused")
        gevent.joinall([gevent.spawn(one, i) for i in range(10)], raise_error=True)
        assert sorted(outcomes) == ["refused"] * 7 + ["stored"] * 3
        assert store.recent_requests("+13125550150") == 3
        rows = [r for r in store.refusals() if r["rule"] == "per_number"]
        assert len(rows) == 7 and all(r["stage"] == "request" for r in rows)
    finally:
        other.close()


def test_rate_limit_per_calling_number_and_merges_do_not_count(store):
    limits = RateLimits(per_number_per_day=3, per_caller_per_hour=2)
    first = _request(store, "+13125550160", "support", ani="+13125550001", limits=limits)
    assert _request(store, "+13125550160", "support", ani="+13125550002", limits=limits) == first   # merged
    assert _request(store, "+13125550161", "support", ani="+13125550001", limits=limits) != first
    with pytest.raises(PolicyRefused, match="calling number \\+13125550001 asked for 2 callbacks") as e:
        _request(store, "+13125550162", "support", ani="+13125550001", limits=limits)
    assert e.value.rule == "per_caller"
    assert store.recent_requests("+13125550160") == 1                  # the merged request made no call


def test_a_policy_tightened_after_the_request_refuses_the_dial(pg_url):
    h = Harness(pg_url, quick_script(delay="1"))
    try:
        h.agent("ann", "1001", answer=0.1)
        h.call("3125550170", "3125557000", "dtmf 1 1.2")
        h.wait_state("callback_queued")
        h.controller.stop()
        # Restarted with +1312 denied (fraud seen from there): the queued callback must not be dialled.
        h.settings.deny_prefixes = "+1312"
        from esl_cb.controller.service import Controller
        h.controller = Controller(h.settings, h.store, quick_script(delay="1")).start()
        h.sim.switch.socket_target = ("127.0.0.1", h.controller.listen_port)
        wait_until(h.controller.esl_ready.is_set, 5, what="the restarted controller")
        h.available("ann")
        ended = h.wait_state("ended", timeout=15)
        assert ended.outcome == "policy_refused" and "+1312" in ended.last_error
        assert h.originates_to("+13125550170") == []                     # the agent was rung, the customer never
        wait_until(lambda: h.store.agent("ann").state == "Available", what="the agent released")
        row = h.rows("SELECT * FROM policy_refusals")[0]
        assert (row["stage"], row["rule"]) == ("dial", "deny_prefix")
        assert h.rows("SELECT result FROM callback_attempts")[0]["result"] == "refused"
    finally:
        h.close()


def test_an_operators_override_lets_one_number_through_and_is_audited(pg_url):
    h = Harness(pg_url, quick_script(), allowed_countries="US")
    try:
        out = CliRunner().invoke(main, ["callback", "policy", "override", "+442079460000", "--reason",
                                        "UK customer, ticket 4711", "--db", pg_url, "--operator", "carol"])
        assert out.exit_code == 0, out.output
        h.agent("ann", "1001", answer=0.1)
        h.sim_api("endpoint +442079460000 answer 0.1")
        h.call("+442079460000", "3125557000", "dtmf 1 1.2")
        queued = h.wait_state("callback_queued")
        assert queued.policy_override
        h.available("ann")
        h.wait_connected(timeout=15)
        assert len(h.originates_to("+442079460000")) == 1
        audit = CliRunner().invoke(main, ["audit", "--json", "--db", pg_url])
        assert '"operator": "carol"' in audit.output and "ticket 4711" in audit.output
        check = CliRunner().invoke(main, ["callback", "policy", "check", "+442079460000", "--db", pg_url])
        assert check.exit_code == 0 and "rule 'override'" in check.output
    finally:
        h.close()


def test_operator_actions_are_audited(pg_url, store):
    run = CliRunner().invoke
    assert run(main, ["agent", "add", "zoe", "--dial-string", "user/7001", "--skill", "support", "--db", pg_url,
                      "--operator", "dave"]).exit_code == 0
    assert run(main, ["agent", "available", "zoe", "--db", pg_url, "--operator", "dave"]).exit_code == 0
    cid = store.create_contact("c1", "+13125550180", "3125557000", "t", "+13125550180", "3125557000")
    store.queue_contact(cid, "support", Priority(0, 0, 0))
    assert run(main, ["callback", "cancel", str(cid), "--db", pg_url, "--operator", "erin"]).exit_code == 0
    log = store.audit_log()
    assert [(e["operator"], e["action"], e["target"]) for e in reversed(log)] == [
        ("dave", "agent add", "zoe"), ("dave", "agent state", "zoe"), ("erin", "callback cancel", f"contact {cid}")]
    assert "LoggedOut -> Available" in log[1]["detail"]
    table = run(main, ["audit", "--db", pg_url])
    assert table.exit_code == 0 and "erin" in table.output


def test_the_outbound_socket_accepts_only_the_switch(caplog):
    import ipaddress
    refused: list[str] = []
    server = CallServer("127.0.0.1", 0, lambda ch: None, allowed=[ipaddress.ip_network("10.0.0.0/8")],
                        on_refused=refused.append)
    g = gevent.spawn(server.listen)
    try:
        assert server.ready.wait(5)
        caplog.set_level(logging.WARNING, logger="esl_cb.esl.outbound")
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", server.bound_port), timeout=2)
            assert s.recv(100) == b""                    # closed at once, nothing said
            s.close()
        wait_until(lambda: len(refused) == 3, what="three refusals")
        said = [r for r in caplog.records if "refused an outbound-socket connection from 127.0.0.1" in r.getMessage()]
        assert len(said) == 1                            # logged once a minute per address, not per connection
    finally:
        server.stop()
        g.kill()


def test_run_refuses_an_open_listener_without_an_allow_list(pg_url):
    out = CliRunner().invoke(main, ["run", "--db", pg_url, "--listen", "0.0.0.0:18084"])
    assert out.exit_code == 2 and "--allow-from" in out.output


def test_agents_available_after_the_audit_change(store):
    store.add_agent("amy", "user/7001", ["support"])
    assert store.set_agent_state("amy", AgentState.AVAILABLE, list(AgentState)) == AgentState.LOGGED_OUT
    assert store.audit_log() == []                      # no operator: not an operator's action
