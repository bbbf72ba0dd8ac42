"""When a command reached the simulated switch: the kernel's receive time of its bytes (SO_TIMESTAMPNS),
not when this single-threaded simulator got round to reading them."""
from __future__ import annotations

import socket
import struct
import sys
import time

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)     # Linux's number; Python does not name it


def enable_receive_timestamps(sock) -> bool:
    """Ask the kernel to stamp what arrives. Linux switches stamping on lazily (a deferred work item)
    the first time a socket asks, so the listening socket asks at start: connections accepted from it
    inherit the flag and are stamped from their first byte."""
    if sys.platform != "linux":
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def kernel_time(ancillary) -> float:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = struct.unpack("qq", data[:16])
            if sec:                 # 0: the packet came before stamping was switched on
                return sec + nsec / 1e9
    return time.time()
