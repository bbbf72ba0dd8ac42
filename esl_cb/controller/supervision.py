"""The controller's long-lived greenlets, supervised: one that dies (an exception nobody expected, or
a return while the controller runs) is restarted after a growing pause, with a log line and a count
(`esl_cb_greenlet_restarts_total`). Before, a dispatcher killed by an ESL timeout was gone for good
while the heartbeat went on, so no other controller took over and nothing was offered again (issue
17). One that keeps dying is not hidden by restarts: past `max_restarts` in `window` seconds the
supervisor gives up and says so (`on_fatal`; `esl-cb run` then exits non-zero, for systemd to restart
the whole process).
"""
from __future__ import annotations

import logging
import time
from collections import Counter, deque
from typing import Callable

import gevent

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, max_restarts: int = 5, window: float = 60.0, first_pause: float = 0.5,
                 max_pause: float = 30.0) -> None:
        self.max_restarts = max_restarts
        self.window = window
        self.first_pause = first_pause
        self.max_pause = max_pause
        self.running = False
        self.restarts: Counter[str] = Counter()
        self.greenlets: dict[str, gevent.Greenlet] = {}
        self.on_restart: Callable[[str], None] = lambda name: None     # metrics
        self.on_fatal: Callable[[str], None] = lambda name: None       # the process should end
        self._recent: dict[str, deque[float]] = {}
        self._retired: set[str] = set()

    def spawn(self, name: str, run: Callable[[], None], restart: bool = True) -> gevent.Greenlet:
        """Run `run` as the greenlet `name`. With restart=False (one that cannot simply start over,
        such as a listening server), its death is fatal at once."""
        self.running = True
        g = self.greenlets[name] = gevent.spawn(self._keep, name, run, restart)
        return g

    def retire(self, name: str) -> None:
        """The greenlet `name` is being stopped on purpose: its end is neither restarted nor fatal."""
        self._retired.add(name)

    def stop(self) -> None:
        self.running = False
        for g in self.greenlets.values():
            g.kill(block=False)

    def alive(self) -> bool:
        """Every supervised greenlet is running (for a watchdog)."""
        return self.running and all(not g.dead for name, g in self.greenlets.items() if name not in self._retired)

    def _keep(self, name: str, run: Callable[[], None], restart: bool = True) -> None:
        pause = self.first_pause
        recent = self._recent.setdefault(name, deque())
        while self.running and name not in self._retired:
            started = time.monotonic()
            try:
                run()
            except gevent.GreenletExit:
                raise
            except Exception:
                if not self.running or name in self._retired:
                    return
                log.exception("the %s greenlet died; restarting it in %.1fs", name, pause)
            else:
                if not self.running or name in self._retired:
                    return
                log.error("the %s greenlet returned while the controller runs; restarting it in %.1fs", name, pause)
            now = time.monotonic()
            if now - started > self.window:
                pause = self.first_pause           # it had run well for a while: start the pauses over
            recent.append(now)
            while recent and now - recent[0] > self.window:
                recent.popleft()
            if not restart:
                log.critical("the %s greenlet cannot be restarted; giving up on this process", name)
                self.on_fatal(name)
                return
            self.restarts[name] += 1
            self.on_restart(name)
            if len(recent) > self.max_restarts:
                log.critical("the %s greenlet died %d times in %.0fs; giving up on this process", name,
                             len(recent), self.window)
                self.on_fatal(name)
                return
            gevent.sleep(pause)
            pause = min(pause * 2, self.max_pause)
