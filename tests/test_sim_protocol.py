"""The simulator works with stock greenswitch and survives hostile clients like FreeSWITCH does."""
from __future__ import annotations

import random
import socket
import time

import gevent
import greenswitch
import pytest
from gevent.event import AsyncResult

from esl_cb.esl.wire import FrameReader
from esl_cb.sim import api


def raw_client(sim):
    s = socket.create_connection(sim.address)
    s.settimeout(5)
    return s


def read_frames(sock, count, timeout=5.0):
    reader, frames = FrameReader(), []
    with gevent.Timeout(timeout):
        while len(frames) < count:
            data = sock.recv(65536)
            if not data:
                break
            frames.extend(reader.feed(data))
    return frames


def test_greenswitch_inbound_esl_works_unchanged(sim):
    api.execute(sim.switch, "sim", "endpoint 5551000 answer 0.05")
    esl = greenswitch.InboundESL(host="127.0.0.1", port=sim.port, password="ClueCon")
    esl.connect()
    try:
        assert esl.send("api version").data.startswith("FreeSWITCH Version")
        answered = AsyncResult()
        esl.register_handle("CHANNEL_ANSWER", lambda ev: answered.set(ev.headers["Unique-ID"]))
        assert esl.send("event plain CHANNEL_ANSWER").headers["Reply-Text"] == "+OK event listener enabled plain"
        reply = esl.send("api originate {origination_uuid=11111111-2222-4333-8444-555555555555}"
                         "sofia/gateway/pstn/5551000 &park()")
        assert reply.data == "+OK 11111111-2222-4333-8444-555555555555\n"
        assert answered.get(timeout=5) == "11111111-2222-4333-8444-555555555555"
        assert esl.send("api uuid_exists 11111111-2222-4333-8444-555555555555").data == "true"
    finally:
        esl.stop()


def test_greenswitch_rejects_wrong_password(sim):
    esl = greenswitch.InboundESL(host="127.0.0.1", port=sim.port, password="nope")
    with pytest.raises(ValueError):
        esl.connect()


def test_greenswitch_outbound_server_runs_a_call(sim):
    done = AsyncResult()

    class App:
        def __init__(self, session):
            self.session = session

        def run(self):
            self.session.myevents()
            self.session.linger()
            self.session.answer()
            event = self.session.playback("ivr/ivr-thank_you.wav", block=True)
            self.session.hangup()
            done.set(event.headers["Application-Response"])

    # greenswitch takes port 0 for "could not bind" and exits: give it a free port.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = greenswitch.OutboundESLServer(bind_address="127.0.0.1", bind_port=port, application=App)
    listener = gevent.spawn(server.listen)
    try:
        with gevent.Timeout(5):
            while server.server is None or not server._running:
                gevent.sleep(0.01)
        sim.switch.socket_target = server.server.getsockname()
        sim.switch.time_scale = 0.1
        reply = api.execute(sim.switch, "sim", "call 3125550199 5000")
        assert reply.startswith("+OK ")
        assert done.get(timeout=10) == "FILE PLAYED"
    finally:
        server.stop()
        listener.kill()


def test_frames_split_into_single_bytes_are_understood(sim):
    s = raw_client(sim)
    read_frames(s, 1)
    for b in b"auth ClueCon\n\napi version\n\n":
        s.send(bytes([b]))
        gevent.sleep(0)
    frames = read_frames(s, 2)
    assert frames[0].get("Reply-Text") == "+OK accepted"
    assert frames[1].body.startswith(b"FreeSWITCH Version")


def test_wrong_password_gets_freeswitch_reply_and_close(sim):
    s = raw_client(sim)
    read_frames(s, 1)
    s.sendall(b"auth wrong\n\n")
    frames = read_frames(s, 2)
    assert frames[0].headers == [("Content-Type", "command/reply"), ("Reply-Text", "-ERR invalid")]
    assert frames[1].get("Content-Type") == "text/disconnect-notice"
    assert frames[1].body == b"Disconnected, goodbye.\nSee you at ClueCon! http://www.cluecon.com/\n"
    assert s.recv(10) == b""


def test_client_vanishing_mid_frame_and_garbage_leave_server_healthy(sim):
    s = raw_client(sim)
    read_frames(s, 1)
    s.sendall(b"auth ClueCon\n\napi orig")          # cut in the middle of a command
    s.close()
    rng = random.Random(7)
    for _ in range(20):
        g = raw_client(sim)
        read_frames(g, 1)
        g.sendall(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000))) + b"\n\n")
        g.close()
    g = raw_client(sim)
    read_frames(g, 1)
    g.sendall(b"Content-Length: -5\n\nauth ClueCon\n\n")   # nonsense header block, then a real command
    g.close()
    ok = raw_client(sim)
    read_frames(ok, 1)
    ok.sendall(b"auth ClueCon\n\napi status\n\n")
    frames = read_frames(ok, 2)
    assert frames[0].get("Reply-Text") == "+OK accepted"
    assert frames[1].body.startswith(b"UP ")


def test_command_before_auth_is_refused_then_auth_works(sim):
    s = raw_client(sim)
    read_frames(s, 1)
    s.sendall(b"api status\n\nauth ClueCon\n\n")
    frames = read_frames(s, 2)
    assert [f.get("Reply-Text") for f in frames] == ["-ERR command not found", "+OK accepted"]


@pytest.mark.parametrize("mode,cause", [("busy", "USER_BUSY"), ("noanswer", "NO_ANSWER"),
                                        ("reject", "CALL_REJECTED"), ("fail", "NORMAL_TEMPORARY_FAILURE")])
def test_endpoint_modes_give_freeswitch_causes(sim, mode, cause):
    sim.switch.time_scale = 0.01
    assert api.execute(sim.switch, "sim", f"endpoint 5551234 {mode}") == "+OK\n"
    for dial in ("sofia/lab/5551234@127.0.0.1:5080", "user/5551234", "sofia/gateway/pstn/5551234"):
        assert api.execute(sim.switch, "originate", f"{{originate_timeout=2}}{dial} &park()") == f"-ERR {cause}\n"


def test_endpoint_answer_then_remote_hangup(sim):
    sim.switch.time_scale = 0.01
    api.execute(sim.switch, "sim", "endpoint 5550000 answer 0.5 2")
    reply = api.execute(sim.switch, "originate", "user/5550000 &park()")
    assert reply.startswith("+OK ")
    uuid = reply.split()[1]
    assert api.execute(sim.switch, "uuid_exists", uuid) == "true"
    with gevent.Timeout(2):
        while api.execute(sim.switch, "uuid_exists", uuid) == "true":
            gevent.sleep(0.01)


def test_sim_usage_errors_are_clear(sim):
    assert api.execute(sim.switch, "sim", "endpoint 555 explode").startswith("-ERR unknown endpoint mode")
    assert api.execute(sim.switch, "sim", "call 1 2 dance").startswith("-ERR unexpected 'dance'")
    assert api.execute(sim.switch, "sim", "").startswith("-USAGE: sim endpoint")


def test_a_commands_receipt_is_when_it_reached_the_switch_not_when_the_simulator_got_to_it(sim):
    """Benchmarks time the controller by the simulator's receipt of its originate. A busy simulator
    (one thread, unlike FreeSWITCH's thread per connection) must not make the controller look late."""
    api.execute(sim.switch, "sim", "endpoint 5552000 answer 0.05")
    s = raw_client(sim)
    s.sendall(b"auth ClueCon\n\n")
    read_frames(s, 2)                       # auth/request, then the reply
    sent = time.time()
    s.sendall(b"bgapi originate sofia/gateway/pstn/5552000 &park()\nJob-UUID: 7e1d0c55-0000-4000-8000-000000000001\n\n")
    while time.time() < sent + 0.2:         # the simulator's loop is busy meanwhile (no yield: time.sleep
        pass                                # is gevent's here)
    read_frames(s, 1)
    received = sim.switch.originates[-1]["t"]
    assert sent <= received < sent + 0.1, received - sent
    s.close()
