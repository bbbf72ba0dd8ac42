"""The simulator process: an ESL server on top of the simulated switch."""
from __future__ import annotations

import logging
import uuid as uuidlib

import gevent
from gevent.server import StreamServer

from .connection import InboundConnection, run_inbound
from .events import Identity
from .stamps import enable_receive_timestamps
from .switch import Switch

log = logging.getLogger(__name__)


class Simulator:
    """A FreeSWITCH stand-in listening for inbound ESL and calling the controller's outbound socket.

    Bind to port 0 in tests and read .port afterwards.
    """

    def __init__(self, listen: tuple[str, int] = ("127.0.0.1", 8021), password: str = "ClueCon",
                 socket_target: tuple[str, int] = ("127.0.0.1", 8084), time_scale: float = 1.0,
                 seed: int | None = None, identity: Identity | None = None, heartbeat: float = 20.0,
                 event_lag: float = 0.0, max_sessions: int = 5000, sessions_per_second: int = 0) -> None:
        self.switch = Switch(identity or Identity(core_uuid=str(uuidlib.uuid4())), time_scale=time_scale,
                             seed=seed, socket_target=socket_target, max_sessions=max_sessions,
                             sessions_per_second=sessions_per_second)
        self.switch.socket_app = run_inbound
        self.password = password
        self.heartbeat = heartbeat
        self.event_lag = event_lag
        self.server = StreamServer(listen, self._handle, spawn=10000)
        self.connections: set[InboundConnection] = set()
        self._heartbeat_greenlet: gevent.Greenlet | None = None

    @property
    def port(self) -> int:
        return self.server.server_port

    @property
    def address(self) -> tuple[str, int]:
        return self.server.address[0], self.port

    def start(self) -> "Simulator":
        self.server.start()
        enable_receive_timestamps(self.server.socket)
        if self.heartbeat > 0:
            self._heartbeat_greenlet = gevent.spawn(self._beat)
        log.info("FreeSWITCH simulator listening on %s:%d, calls go to %s:%d",
                 *self.address, *self.switch.socket_target)
        return self

    def serve_forever(self) -> None:
        self.start()
        self.server.serve_forever()

    def stop(self) -> None:
        if self._heartbeat_greenlet is not None:
            self._heartbeat_greenlet.kill(block=False)
        self.server.stop(timeout=1)
        for conn in list(self.connections):
            conn.close()
        for ch in list(self.switch.channels.values()):
            if ch.session is not None:
                ch.session.close()

    def drop_connections(self) -> None:
        """Close every inbound ESL connection without a notice (a crashed or restarted switch)."""
        for conn in list(self.connections):
            conn.close()

    def _beat(self) -> None:
        while True:
            gevent.sleep(self.heartbeat)
            self.switch.emit_heartbeat()

    def _handle(self, sock, address) -> None:
        conn = InboundConnection(self.switch, sock, self.password)
        conn.event_lag = self.event_lag
        self.connections.add(conn)
        try:
            conn.serve()
        finally:
            self.connections.discard(conn)
