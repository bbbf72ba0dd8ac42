"""systemd's service protocol for `esl-cb run` (Type=notify, WatchdogSec=): sd_notify(3) without a
library: each message is one datagram to the AF_UNIX socket named by $NOTIFY_SOCKET.

- READY=1 once the controller is connected to FreeSWITCH (before that it cannot take a call).
- WATCHDOG=1, from a greenlet of the controller's event loop, only while every supervised greenlet
  is alive and the loop is on time (a timer late by less than `max_lag`). A wedged loop sends
  nothing at all; a loop that runs but lags, or a controller with a dead part, stops feeding the
  watchdog: systemd kills the process after WatchdogSec and starts it again (Restart=on-failure).
  The pings come four times per WatchdogSec, so one late tick is not yet a restart.
- STOPPING=1 when a clean stop begins; STATUS= lines for `systemctl status`.
Outside systemd ($NOTIFY_SOCKET unset) every call does nothing.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable, Mapping, Protocol

import gevent
from gevent.event import Event

log = logging.getLogger(__name__)


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify message; False when there is no systemd to tell (or it cannot be told)."""
    path = (os.environ if environ is None else environ).get("NOTIFY_SOCKET", "")
    if path.startswith("@"):
        address = "\0" + path[1:]          # an abstract socket
    elif path.startswith("/"):
        address = path
    else:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as e:
        log.warning("cannot tell systemd %r over %s: %s", message.split("\n")[0], path, e.strerror)
        return False
    return True


def watchdog_seconds(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float:
    """WatchdogSec= as systemd passes it (WATCHDOG_USEC, for WATCHDOG_PID); 0 when there is none."""
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec:
        return 0.0
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(os.getpid() if pid is None else pid):
        return 0.0                          # meant for another process (we were started by one)
    try:
        seconds = int(usec) / 1_000_000
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        log.warning("WATCHDOG_USEC=%r is not a number of microseconds above 0; not feeding the watchdog", usec)
        return 0.0
    return seconds


class Watched(Protocol):
    """What the notifier looks at (the controller)."""

    esl_ready: Event
    stopped: Event
    failed: Event

    @property
    def supervisor(self): ...


class ServiceNotifier:
    def __init__(self, controller: Watched, max_lag: float, esl: str = "",
                 environ: Mapping[str, str] | None = None,
                 send: Callable[[str], bool] | None = None) -> None:
        self.controller = controller
        self.max_lag = max_lag
        self.esl = esl
        self.environ = os.environ if environ is None else environ
        self.send = send or (lambda message: notify(message, self.environ))
        self.interval = watchdog_seconds(self.environ)
        self.period = self.interval / 4
        self.pings = 0
        self.skipped = 0
        self._greenlets: list[gevent.Greenlet] = []

    def start(self) -> "ServiceNotifier":
        self.send(f"STATUS={self.status()}")
        self._greenlets.append(gevent.spawn(self._ready))
        if self.interval:
            self._greenlets.append(gevent.spawn(self._watchdog))
        return self

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=stopping: finishing the work in flight")

    def stop(self) -> None:
        for g in self._greenlets:
            g.kill(block=False)

    def _ready(self) -> None:
        self.controller.esl_ready.wait()
        self.send(f"READY=1\nSTATUS={self.status()}")

    def healthy(self, lag: float) -> str:
        """'' when the watchdog may be fed; else why not."""
        c = self.controller
        if c.failed.is_set() or c.stopped.is_set():
            return "the controller stopped"
        if not c.supervisor.alive():
            dead = [name for name, g in c.supervisor.greenlets.items() if g.dead]
            return f"a supervised greenlet is not running ({', '.join(dead) or 'the supervisor stopped'})"
        if lag >= self.max_lag:
            return f"the event loop is {lag:.2f}s late (bound {self.max_lag:g}s)"
        return ""

    def status(self) -> str:
        """The STATUS= line for `systemctl status`."""
        if self.controller.esl_ready.is_set():
            return f"connected to FreeSWITCH at {self.esl}"
        return f"waiting for FreeSWITCH at {self.esl}"

    def _watchdog(self) -> None:
        problem, shown = "", ""
        while True:
            started = time.monotonic()
            gevent.sleep(self.period)
            lag = max(time.monotonic() - started - self.period, 0.0)
            now = self.healthy(lag)
            if not now:
                self.send("WATCHDOG=1")
                self.pings += 1
            else:
                self.skipped += 1
            if now != problem:
                if now:
                    log.error("not feeding systemd's watchdog: %s; systemd restarts the controller after %gs "
                              "of this", now, self.interval)
                else:
                    log.info("feeding systemd's watchdog again")
                problem = now
            status = f"unhealthy: {now}" if now else self.status()
            if status != shown:
                self.send(f"STATUS={status}")
                shown = status
