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


def switch_identity(text: str) -> str:
    """A switch's ESL address as one spelling, so that `127.0.0.1:8021`, `localhost:8021` and
    ` LOCALHOST:8021` name one switch (its row, its controllers, who may adopt whose contacts). Names
    other than localhost are kept (lowercased): resolving them would tie identity to one host's DNS."""
    host, port = parse_hostport(text, default_port=8021)
    host = host.strip().lower().rstrip(".")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"{host}:{port}"
    return f"[{ip.compressed}]:{port}" if ip.version == 6 else f"{ip.compressed}:{port}"


def is_loopback(host: str) -> bool:
    """This host only: localhost or a loopback address (an empty host is not)."""
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
