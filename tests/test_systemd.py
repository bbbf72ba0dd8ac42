"""`esl-cb run` under systemd (Type=notify, WatchdogSec=): READY=1 once connected to the switch,
WATCHDOG=1 only while every supervised greenlet is alive and the event loop is on time, STOPPING=1
on a clean stop. systemd's side is a datagram socket of our own, as $NOTIFY_SOCKET."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import gevent
import pytest
from gevent.event import Event
from gevent.monkey import get_original

from esl_cb.systemd import ServiceNotifier, notify, watchdog_seconds

from .fixtures import wait_until
from .procs import REPO, free_port, wait_port


def spawn(args: list[str], log: Path, extra_env: dict[str, str]) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ESL_CB_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    return subprocess.Popen([sys.executable, "-c", "from cli import main; main()", *args], cwd=REPO,
                            env={**env, **extra_env}, stdout=log.open("ab"), stderr=subprocess.STDOUT)


blocking_sleep = get_original("time", "sleep")     # time.sleep is gevent's here: this one blocks the loop


class NotifySocket:
    """systemd's end: collects the messages a service sends."""

    def __init__(self, path: Path | str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path) if not str(path).startswith("@") else "\0" + str(path)[1:])
        self.path = str(path)
        self.messages: list[str] = []
        self.reader = gevent.spawn(self._read)

    def _read(self) -> None:
        while True:
            self.messages.append(self.sock.recv(4096).decode())

    def lines(self) -> list[str]:
        return [line for m in self.messages for line in m.split("\n")]

    def close(self) -> None:
        self.reader.kill()
        self.sock.close()


def test_notify_is_one_datagram_to_a_path_or_an_abstract_socket(tmp_path):
    for name in (tmp_path / "notify", f"@esl-cb-test-{free_port()}"):
        systemd = NotifySocket(name)
        try:
            assert notify("READY=1\nSTATUS=hello", {"NOTIFY_SOCKET": str(name)})
            wait_until(lambda: systemd.messages, 2, what="the datagram")
            assert systemd.messages == ["READY=1\nSTATUS=hello"]
        finally:
            systemd.close()
    assert notify("READY=1", {}) is False                       # not under systemd: nothing to do


def test_watchdog_seconds_read_from_the_environment():
    assert watchdog_seconds({"WATCHDOG_USEC": "10000000"}, pid=42) == 10.0
    assert watchdog_seconds({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "42"}, pid=42) == 10.0
    assert watchdog_seconds({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "41"}, pid=42) == 0.0
    assert watchdog_seconds({}, pid=42) == 0.0
    assert watchdog_seconds({"WATCHDOG_USEC": "ten"}, pid=42) == 0.0


class FakeController:
    def __init__(self) -> None:
        self.esl_ready, self.stopped, self.failed = Event(), Event(), Event()
        self.is_alive = True
        self.supervisor = SimpleNamespace(alive=lambda: self.is_alive,
                                          greenlets={"dispatcher": SimpleNamespace(dead=True)})


def test_ready_only_once_connected_and_the_watchdog_fed_only_while_healthy():
    sent: list[str] = []
    controller = FakeController()
    notifier = ServiceNotifier(controller, max_lag=0.1, esl="127.0.0.1:8021",
                               environ={"WATCHDOG_USEC": "200000"}, send=lambda m: sent.append(m) or True)
    assert notifier.period == pytest.approx(0.05)
    notifier.start()
    try:
        wait_until(lambda: notifier.pings >= 2, 2, what="the watchdog fed while the controller connects")
        assert not [m for m in sent if "READY=1" in m], "not ready before FreeSWITCH is connected"
        controller.esl_ready.set()
        wait_until(lambda: [m for m in sent if m.startswith("READY=1")], 2, what="READY=1")

        controller.is_alive = False                 # a supervised greenlet died
        skipped = notifier.skipped
        wait_until(lambda: notifier.skipped >= skipped + 1, 2, what="a tick with a dead greenlet")
        pings = notifier.pings
        wait_until(lambda: notifier.skipped >= skipped + 3, 2, what="more ticks with a dead greenlet")
        assert notifier.pings == pings, "no WATCHDOG=1 while a supervised greenlet is dead"
        assert any(m.startswith("STATUS=unhealthy: a supervised greenlet") for m in sent)
        controller.is_alive = True
        wait_until(lambda: notifier.pings > pings, 2, what="the watchdog fed again")

        pings, skipped = notifier.pings, notifier.skipped
        blocking_sleep(0.3)                         # the event loop wedged (a blocking call) for 0.3 s
        wait_until(lambda: notifier.skipped > skipped, 2, what="the late tick skipped")
        assert notifier.pings == pings, "the tick that came 0.3 s late did not feed the watchdog"
        assert any("the event loop is" in m for m in sent)
        wait_until(lambda: notifier.pings > pings, 2, what="the watchdog fed once the loop is on time")
    finally:
        notifier.stop()
    notifier.stopping()
    assert sent[-1].startswith("STOPPING=1")


def test_no_watchdog_without_watchdog_sec():
    sent: list[str] = []
    controller = FakeController()
    controller.esl_ready.set()
    notifier = ServiceNotifier(controller, max_lag=0.1, environ={}, send=lambda m: sent.append(m) or True).start()
    try:
        wait_until(lambda: [m for m in sent if m.startswith("READY=1")], 2, what="READY=1")
        gevent.sleep(0.1)
        assert not [m for m in sent if "WATCHDOG" in m] and notifier.interval == 0
    finally:
        notifier.stop()


def test_esl_cb_run_tells_systemd_ready_after_connecting_feeds_the_watchdog_and_stops_cleanly(tmp_path, pg_url):
    """The real process: READY=1 only once the switch answers (the watchdog is fed meanwhile: a
    controller waiting for its switch is alive), STOPPING=1 and exit 0 on SIGTERM."""
    systemd = NotifySocket(tmp_path / "notify")
    port, sim = free_port(), None
    sim_port = free_port()
    env = {"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "400000"}
    proc = spawn(["run", "--db", pg_url, "--esl", f"127.0.0.1:{sim_port}", "--listen", f"127.0.0.1:{port}",
                  "--script", str(REPO / "esl_cb/scripts/callback-example.yaml")], tmp_path / "controller.log",
                 env)
    try:
        wait_port(port)
        wait_until(lambda: systemd.lines().count("WATCHDOG=1") >= 3, 15,
                   what="the watchdog fed while the switch is down")
        assert "READY=1" not in systemd.lines(), "ready before FreeSWITCH answers"
        assert f"STATUS=waiting for FreeSWITCH at 127.0.0.1:{sim_port}" in systemd.lines()
        sim = spawn(["sim", "--listen", f"127.0.0.1:{sim_port}", "--socket-target", f"127.0.0.1:{port}"],
                    tmp_path / "sim.log", {})
        wait_until(lambda: "READY=1" in systemd.lines(), 20, what="READY=1 once connected")
        assert f"STATUS=connected to FreeSWITCH at 127.0.0.1:{sim_port}" in systemd.lines()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert "STOPPING=1" in systemd.lines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if sim is not None:
            sim.terminate()
            sim.wait(5)
        systemd.close()
