"""FreeSWITCH's core database, as `show channels` and `show calls` read it.

A background thread writes channel changes into it in batches, about every 200 ms (measured on
FreeSWITCH 1.11: a leg that answered still reads RINGING there for 0-235 ms, a new leg appears
0-235 ms after its CHANNEL_CREATE, a hung-up one stays listed as long; esl-captures 13). So what
`show` returns is the state of every channel at the last batch. `uuid_dump` reads the live session.

Modelled as batches at fixed instants (start + k * interval): a channel's row is what it was at
the last batch, a channel created since is missing, one gone since is still there.
"""
from __future__ import annotations

import math
from typing import Any, Callable

Channel = Any       # a switch.Channel (not imported: the switch imports this module)
# What a row shows of a channel: (state, application, application data, uuid of the bridged peer)
Snapshot = tuple


class CoreDB:
    def __init__(self, clock: Callable[[], float], interval: float = 0.2) -> None:
        self.clock = clock
        self.started = clock()
        self.interval = interval
        self._gone: dict[str, tuple[float, Channel]] = {}

    def write(self, ch: Channel) -> None:
        """The channel changed: note what its row will read from the next batch on."""
        snap = (ch.state, ch.app, ch.app_data, ch.peer.uuid if ch.peer is not None else "")
        log = ch.db_log
        if log and log[-1][1] == snap:
            return
        now = self.clock()
        log.append((now, snap))
        if len(log) > 8:
            keep = self._cutoff(now) - 1.0
            while len(log) > 1 and log[1][0] < keep:
                log.pop(0)

    def delete(self, ch: Channel) -> None:
        self._gone[ch.uuid] = (self.clock(), ch)

    def _cutoff(self, now: float) -> float:
        if self.interval <= 0:
            return now
        return self.started + math.floor((now - self.started) / self.interval) * self.interval

    def rows(self, live: dict[str, Channel]) -> list[tuple[Channel, Snapshot]]:
        """(channel, snapshot) as of the last batch, in creation order."""
        cutoff = self._cutoff(self.clock())
        out = []
        for uuid, (gone_at, ch) in list(self._gone.items()):
            if gone_at <= cutoff:
                del self._gone[uuid]
        chans = list(live.values()) + [ch for _, ch in self._gone.values() if ch.uuid not in live]
        for ch in chans:
            snap = None
            for at, s in ch.db_log:
                if at > cutoff:
                    break
                snap = s
            if snap is not None:
                out.append((ch, snap))
        out.sort(key=lambda item: item[0].times.get("created", 0))
        return out
