"""This controller's part of its switch (issue 18): several controllers may share one FreeSWITCH, and
its limits hold across all of them. At each heartbeat the controller reads its switch's row
(`esl-cb switch add`: sessions-per-second, voice ports, up or draining) and how many live
controllers beat for the same switch, and takes its share: the originate pacer's rate and the voice
ports it may use are the switch's divided among them (db/switches.py:switch_share). A controller
that joins a switch with a registered sessions-per-second offers nothing for two heartbeat intervals,
so the others have lowered their shares by the time it uses its own. A draining switch makes no new offers; what is in flight finishes.
"""
from __future__ import annotations

import logging
import time

from esl_cb.config import Settings
from esl_cb.db.store import Store

from .dialler import Dialler
from .dispatcher import Dispatcher
from .pacing import OriginatePacer

log = logging.getLogger(__name__)


class SwitchShareKeeper:
    def __init__(self, settings: Settings, store: Store, pacer: OriginatePacer, dialler: Dialler,
                 dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.store = store
        self.pacer = pacer
        self.dialler = dialler
        self.dispatcher = dispatcher
        self.share = None
        self._joined = False

    def refresh(self, connected: bool) -> None:
        """At each heartbeat (the database answered): take this controller's share now."""
        share = self.store.switch_share(self.settings.esl, seen=connected)
        if not self._joined:
            self._joined = True
            if share.controllers > 1 and share.sessions_per_second is not None:
                self.dispatcher.offers_from = time.monotonic() + 2 * self.settings.heartbeat_interval
        rate = self.settings.originate_rate if share.sessions_per_second is None else \
            min(self.settings.originate_rate, share.sessions_per_second)
        ports = self.settings.ports if share.voice_ports is None else min(self.settings.ports, share.voice_ports)
        if self.share is None or (rate, ports, share.draining) != (self.pacer.rate, self.dialler.voice_port_limit,
                                                                   self.dispatcher.draining):
            log.info("switch %s: %d controller(s) share it; this one paces originates at %.1f/s, uses at most %d "
                     "voice ports%s", share.name or self.settings.esl, share.controllers, rate, ports,
                     "; draining: no new offers" if share.draining else "")
        self.pacer.set_rate(rate)
        self.dialler.voice_port_limit = ports
        if share.draining != self.dispatcher.draining:
            self.dispatcher.draining = share.draining
            if not share.draining:
                self.dispatcher.wake()
        self.share = share
