"""A TCP relay on loopback between a controller and a switch's ESL port, so a test can cut the event
socket alone while the switch's SIP and media go on (the hard case of issue 18: a switch alive but
unreachable), without iptables.

`cut()` closes every relayed connection and refuses new ones (accepted, then closed at once: the
controller sees the switch go away and its reconnects fail); `restore()` lets them through again.
"""
from __future__ import annotations

import socket
import threading

from .switch import free_port


class EslRelay:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.port = free_port(udp_too=False)
        self.address = f"{host}:{self.port}"
        self._open = True
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self.accepted = 0                 # connections let through (the controller's reconnects)
        self._server = socket.create_server((host, self.port))
        self._running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self._running:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._pairs.append((client, upstream))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        """The event socket goes away; the switch itself (SIP, media, calls) is untouched."""
        self._open = False
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def restore(self) -> None:
        self._open = True

    def close(self) -> None:
        self._running = False
        self.cut()
        self._server.close()
