"""Our inbound ESL connection against the simulator: jobs, lazy decoding, timeouts, loss."""
from __future__ import annotations

import gevent
import pytest

from esl_cb.esl.inbound import CommandTimeout, ConnectionLost, ESLError, InboundConnection
from esl_cb.sim import api

from .fixtures import wait_until


def test_background_job_result_is_the_body_not_a_header(sim):
    events = []
    conn = InboundConnection("127.0.0.1", sim.port, "ClueCon", events.append)
    conn.connect(["BACKGROUND_JOB", "CHANNEL_ANSWER"])
    api.execute(sim.switch, "sim", "endpoint 5551000 busy")
    job = conn.bgapi("originate user/5551000 &park()", job_uuid="0000aaaa-0000-4000-8000-000000000001")
    assert job == "0000aaaa-0000-4000-8000-000000000001"
    ev = wait_until(lambda: next((e for e in events if e.name == "BACKGROUND_JOB"), None))
    assert ev.body == b"-ERR USER_BUSY\n" and ev.get("Job-UUID") == job
    conn.close()


def test_values_decode_on_demand_and_first_event_name_wins(sim):
    events = []
    conn = InboundConnection("127.0.0.1", sim.port, "ClueCon", events.append)
    conn.connect(["CHANNEL_PARK", "COMMAND"])
    api.execute(sim.switch, "sim", "endpoint 5551000 answer 0")
    reply = conn.api("originate {origination_uuid=0000bbbb-0000-4000-8000-000000000001}sofia/lab/5551000@127.0.0.1:5080"
                     " &park()")
    assert reply == "+OK 0000bbbb-0000-4000-8000-000000000001\n"
    park = wait_until(lambda: next((e for e in events if e.name == "CHANNEL_PARK"), None))
    assert park.get("Channel-Name") == "sofia/lab/5551000@127.0.0.1:5080"       # %40 and %3A decoded
    conn.api("uuid_broadcast 0000bbbb-0000-4000-8000-000000000001 playback::tone_stream://%(100,0,440) aleg")
    command = wait_until(lambda: next((e for e in events if e.get("Event-Name") == "COMMAND"), None), 5)
    assert command.name == "COMMAND"
    conn.close()


def test_wrong_password_is_a_clear_error(sim):
    conn = InboundConnection("127.0.0.1", sim.port, "wrong", lambda e: None)
    with pytest.raises(ESLError, match="refused the ESL password"):
        conn.connect([])


def test_unreachable_switch():
    conn = InboundConnection("127.0.0.1", 1, "ClueCon", lambda e: None, timeout=1)
    with pytest.raises(ConnectionLost, match="cannot reach FreeSWITCH"):
        conn.connect([])


def test_lost_connection_fails_waiting_commands_and_reports(sim):
    lost = gevent.event.Event()
    conn = InboundConnection("127.0.0.1", sim.port, "ClueCon", lambda e: None, lost.set)
    conn.connect([])
    api.execute(sim.switch, "sim", "endpoint 5551000 noanswer")
    waiter = gevent.spawn(conn.api, "originate {originate_timeout=30}user/5551000 &park()", 10)
    wait_until(lambda: sim.switch.channels, what="the originate to reach the switch")
    sim.drop_connections()
    with pytest.raises(ConnectionLost):
        waiter.get(timeout=5)
    assert lost.wait(5)


def test_command_timeout(sim):
    conn = InboundConnection("127.0.0.1", sim.port, "ClueCon", lambda e: None, timeout=0.3)
    conn.connect([])
    api.execute(sim.switch, "sim", "endpoint 5551000 noanswer")
    with pytest.raises(CommandTimeout, match="did not answer"):
        conn.api("originate {originate_timeout=30}user/5551000 &park()")
