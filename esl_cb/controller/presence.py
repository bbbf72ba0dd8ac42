"""BLF presence (issue 20): each agent state change (the NOTIFY of migration 0008 on esl_cb_events)
becomes a PRESENCE_IN event fired into this controller's switch (`sendevent`), so a phone whose BLF
key watches `agent+NAME@DOMAIN` shows the agent's state (the switch's presence handling turns it
into NOTIFYs for its subscribers; a profile needs manage-presence for that).

The lamp: off (answer-state terminated) when the agent is Available, blinking (early) while offered a
contact, lit (confirmed) otherwise: on a call or in wrap-up, or taking none (Unavailable, Refused, on
a break, logged out). Every lamp is sent again at each connection to the switch.
"""
from __future__ import annotations

import json
import logging
import uuid as uuidlib
from typing import Callable

import gevent
from gevent.queue import Queue

from esl_cb.esl.inbound import ESLError

log = logging.getLogger(__name__)
CHANNEL = "esl_cb_events"            # migration 0008's NOTIFY channel
# A lamp waits this long before it is sent (and the changes meanwhile go with it): the change that
# NOTIFYs it also wakes a claim, here and in every other controller, and on shared cores the lamps'
# work (ours, the switch's) would delay that offer (benchmarks/RESULTS.md, "Two switches against one").
PRESENCE_DELAY = 0.05
# agent state -> (answer-state, rpid, status text)
LAMP = {"Available": ("terminated", "online", "Available"), "Offered": ("early", "busy", "Ringing"),
        "OnCall": ("confirmed", "busy", "On a call"), "Unavailable": ("confirmed", "away", "Unavailable"),
        "Refused": ("confirmed", "away", "Missed a call"), "LoggedOut": ("confirmed", "offline", "Logged out"),
        "WrapUp": ("confirmed", "busy", "Wrap-up"), "OnBreak": ("confirmed", "away", "On break")}


def presence_headers(name: str, state: str, domain: str) -> dict[str, str]:
    answer, rpid, status = LAMP.get(state, ("confirmed", "away", state))
    who = f"agent+{name}@{domain}"
    return {"proto": "agent", "login": who, "from": who, "status": status, "rpid": rpid,
            "event_type": "presence", "alt_event_type": "dialog", "event_count": "1",
            "unique-id": str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, who)), "channel-state": "CS_ROUTING",
            "answer-state": answer, "presence-call-direction": "outbound", "esl_cb_agent_state": state}


class Presence:
    def __init__(self, send: Callable[[str, dict[str, str]], None], domain: Callable[[], str]) -> None:
        self.send = send               # SwitchLink.sendevent
        self.domain = domain           # the switch's default domain
        self.queue: Queue = Queue()
        self.worker: gevent.Greenlet | None = None
        self._resync: gevent.Greenlet | None = None

    def on_notify(self, payload: str) -> None:
        """From the LISTEN greenlet: never blocks."""
        try:
            change = json.loads(payload)
        except ValueError:
            return
        if change.get("kind") != "agent" or not change.get("name"):
            return
        self.queue.put((change["name"], change.get("state", "")))
        if self.worker is None or self.worker.dead:
            self.worker = gevent.spawn_later(PRESENCE_DELAY, self._work)

    def resync(self, agents: Callable[[], list[dict]]) -> None:
        """Every agent's lamp again (at each connection: a restarted switch, or one whose ESL was cut
        while agents changed, shows stale lamps until each agent's next change). Never raises."""
        def send_all() -> None:
            try:
                rows = agents()
            except Exception as e:        # the database away: the next change of each agent will say it
                log.info("presence not re-sent at connection: %s", e)
                return
            for a in rows:
                self.queue.put((a["name"], a["state"]))
            if self.worker is None or self.worker.dead:
                self.worker = gevent.spawn(self._work)
        self._resync = gevent.spawn(send_all)

    def stop(self) -> None:
        for g in (self.worker, self._resync):
            if g is not None:
                g.kill(block=False)

    def _work(self) -> None:
        while not self.queue.empty():
            name, state = self.queue.get()
            try:
                self.send("PRESENCE_IN", presence_headers(name, state, self.domain() or "localhost"))
            except (ESLError, ValueError) as e:       # the lamp is advisory: said, not retried
                log.info("agent %s: presence (%s) not sent: %s", name, state, e)
