"""HOST:PORT parsing and loopback checks shared by the command line, configuration and the doctor."""
from __future__ import annotations

import ipaddress


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """'127.0.0.1:8021' -> ('127.0.0.1', 8021); '[::1]:8021' works too."""
    value = text.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest.lstrip(":")
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            host, port_text = value, ""
    if not port_text:
        if default_port is None:
            raise ValueError(f"{text!r} needs a port: write HOST:PORT, e.g. 127.0.0.1:8021")
        port_text = str(default_port)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 0 to 65535")
    return host or "127.0.0.1", int(port_text)


def is_loopback(host: str) -> bool:
    """This host only: localhost or a loopback address (an empty host is not)."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
