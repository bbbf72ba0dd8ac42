"""Kamailio for the topology tests: the reference configuration (kamailio_conf/kamailio.cfg) on a
free loopback port, the switches as its dispatcher set, registrations in memory; SIPp registers
the agents' phones at it."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .sipp import HERE
from .switch import REQUIRED, free_port

REPO = Path(__file__).resolve().parent.parent.parent
CONFIG = REPO / "kamailio_conf" / "kamailio.cfg"
KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"


def require_kamailio() -> None:
    if Path(KAMAILIO).exists():
        return
    reason = "kamailio is not installed (.ci/run installs Debian's kamailio)"
    if REQUIRED:
        pytest.fail(f"ESL_CB_REQUIRE_FREESWITCH=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _udp_bound(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", port))
        return False
    except OSError:
        return True
    finally:
        s.close()


class Kamailio:
    def __init__(self, root: Path, switch_sip_ports: list[int]) -> None:
        self.root = root
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        ds_list = root / "dispatcher.list"
        ds_list.write_text("".join(f"1 sip:127.0.0.1:{p}\n" for p in switch_sip_ports))
        self.log = root / "kamailio.log"
        self.proc = subprocess.Popen(
            [KAMAILIO, "-f", str(CONFIG), "-DD", "-E", "-m", "32", "-M", "8", "-Y", str(root), "-w", str(root),
             "-P", str(root / "kamailio.pid"), "-A", f"SIP_PORT={self.port}", "-A", "CHILDREN=2",
             "-A", f'DS_LIST="{ds_list}"',
             "-A", f'CTL_SOCKET="unix:{root / "kamailio_ctl"}"'],
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 10
        while not _udp_bound(self.port):
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"kamailio did not start; see {self.log}")
            time.sleep(0.05)

    def dial(self, user: str) -> str:
        """An agent's dial string from any switch: through this proxy to where the phone registered."""
        return f"sofia/test/{user}@127.0.0.1:{self.port}"

    def register(self, user: str, contact_port: int) -> None:
        """`user`'s phone registers here, with its Contact at the test phones' port."""
        scenario = self.root / f"register-{user}.xml"
        scenario.write_text((HERE / "register.xml").read_text().replace("@CONTACT_PORT@", str(contact_port)))
        done = subprocess.run(
            ["sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(free_port()), "-s", user,
             f"127.0.0.1:{self.port}", "-m", "1", "-nostdin", "-timeout", "10", "-timeout_error"],
            cwd=self.root, capture_output=True, timeout=20)
        if done.returncode != 0:
            raise RuntimeError(f"{user} could not register at kamailio (sipp exit {done.returncode}); "
                               f"see {self.log}")

    def rpc(self, *command: str) -> str:
        """A kamcmd command on this Kamailio's control socket."""
        return subprocess.run(["kamcmd", "-s", f"unix:{self.root / 'kamailio_ctl'}", *command],
                              capture_output=True, text=True, timeout=10).stdout

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
