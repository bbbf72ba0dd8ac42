"""The drop-in files of freeswitch_conf/ on FreeSWITCH's own stock ("vanilla") configuration, installed
the way freeswitch_conf/README.md tells an operator to, on a real switch.

The module copies the installed vanilla configuration, runs README step 3's `cp` lines and fills in
the `CHANGE_ME`s as step 4 asks, then changes only what a shared machine without internet needs:
loopback addresses instead of STUN look-ups and the machine's address, and free ports for every
listener (ESL, the four SIP profiles, TLS, WebSocket, RTP). The socket target of the dialplan
points at a plain TCP server of the test's instead of esl-cb: FreeSWITCH connecting to it is the
proof that a DID reaches esl-cb.

Measured on a 2-core machine: vanilla starts in ~1.6 s once its TLS certificates exist (3-4 s more
when it has to make them, hence -certs on the copy's tls/ folder, as an installed switch has it);
the modules vanilla lists but this build lacks fail to load in microseconds each; the most time
goes to mod_sofia waiting ~1.5 s for its four profiles. SIGTERM takes ~5.4 s.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import gevent
import pytest

from esl_cb.esl.inbound import ESLError, InboundConnection
from esl_cb.esl.wire import url_decode

from .fixtures import wait_until
from .freeswitch.sipp import Phones
from .freeswitch.switch import FREESWITCH, REQUIRED, free_port, require_tools

pytestmark = pytest.mark.freeswitch

DROP_IN = Path(__file__).resolve().parent.parent / "freeswitch_conf"
README = (DROP_IN / "README.md").read_text()
VANILLA = Path(os.environ.get("ESL_CB_FREESWITCH_CONF",
                              Path(FREESWITCH).resolve().parent.parent / "etc" / "freeswitch"))
DID_PATTERN = r"^\+?1?(3125557\d{3})$"       # README step 4's example for a block of DIDs
DID = "3125557000"                            # README step 8's example DID
OTHER_DID = "3125558000"                      # a number the pattern does not take
AGENT, AGENT_PASSWORD = "7001", "agent-7001-secret"
LOOPBACK = {"127.0.0.1", "::1"}


# -- the operator's part: README steps 3 and 4 ----------------------------------------------------
def readme_copies() -> list[tuple[str, str]]:
    """Step 3's `cp FILE "$CONF/FOLDER/"` lines, as (file in freeswitch_conf/, folder in the configuration)."""
    return re.findall(r'^\s*cp (\S+) "\$CONF/([^"]+)"\s*$', README, re.MULTILINE)


def readme_command(start: str) -> str:
    """The one `fs_cli -x` command of the README that begins with `start`."""
    found = {c for c in re.findall(r"""fs_cli -x ['"]([^'"]+)['"]""", README) if c.startswith(start)}
    assert len(found) == 1, f"the README should have one fs_cli command starting {start!r}: {found}"
    return found.pop()


def edit(path: Path, old: str, new: str) -> None:
    """Replace text that must be there (a vanilla that changed fails here, not by binding 5060)."""
    text = path.read_text()
    assert old in text, f"{path}: {old!r} not found"
    path.write_text(text.replace(old, new, 1))


def install_as_documented(conf: Path, carrier: str) -> None:
    copies = readme_copies()
    assert sorted(f for f, _ in copies) == sorted(str(p.relative_to(DROP_IN)) for p in DROP_IN.rglob("*.xml"))
    for src, folder in copies:
        assert (conf / folder).is_dir(), f"vanilla has no {folder}"
        shutil.copy(DROP_IN / src, conf / folder)
    # Step 4: every CHANGE_ME, with the README's own example for the DIDs.
    edit(conf / "dialplan/public/50_esl_cb.xml", "^(CHANGE_ME_DIDS)$", DID_PATTERN)
    edit(conf / "sip_profiles/external/esl_cb_pstn.xml", "CHANGE_ME.carrier.invalid", carrier)
    edit(conf / "directory/default/esl_cb_agent_7001.xml", "CHANGE_ME-7001", AGENT_PASSWORD)
    left = [str(p) for p in conf.rglob("*") if p.is_file() and b"CHANGE_ME" in p.read_bytes()]
    assert not left, f"step 4's grep would still find CHANGE_ME in {left}"


# -- the test machine's part: loopback, free ports -------------------------------------------------
class VanillaSwitch:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "conf"
        self.ports = {name: free_port() for name in ("esl", "internal_sip", "internal_tls", "external_sip",
                                                     "external_tls", "ws", "wss", "socket", "carrier")}
        self.rtp = random.randrange(20000, 59000, 200)
        shutil.copytree(VANILLA, self.conf, symlinks=True)
        install_as_documented(self.conf, f"127.0.0.1:{self.ports['carrier']}")   # nothing listens there
        self.password = re.search(r'name="password" value="([^"]*)"',
                                  (self.conf / "autoload_configs/event_socket.conf.xml").read_text()).group(1)
        self._machine_only_changes()
        self.proc: subprocess.Popen | None = None
        self._esl: InboundConnection | None = None

    def _machine_only_changes(self) -> None:
        c, p = self.conf, self.ports
        vars_xml = c / "vars.xml"
        # No STUN look-up (no internet here) and no address but loopback; set before vanilla uses them.
        edit(vars_xml, "<include>", '<include>\n  <X-PRE-PROCESS cmd="set" data="local_ip_v4=127.0.0.1"/>\n'
                                    '  <X-PRE-PROCESS cmd="set" data="local_ip_v6=::1"/>')
        for name in ("external_rtp_ip", "external_sip_ip"):
            edit(vars_xml, f'cmd="stun-set" data="{name}=stun:stun.freeswitch.org"',
                 f'cmd="set" data="{name}=127.0.0.1"')
        for name, default in (("internal_sip", 5060), ("internal_tls", 5061), ("external_sip", 5080),
                              ("external_tls", 5081)):
            edit(vars_xml, f'data="{name}_port={default}"', f'data="{name}_port={p[name]}"')
        # Vanilla's internal profile binds SIP over WebSocket on every address.
        edit(c / "sip_profiles/internal.xml", 'value=":5066"', f'value="127.0.0.1:{p["ws"]}"')
        edit(c / "sip_profiles/internal.xml", 'value=":7443"', f'value="127.0.0.1:{p["wss"]}"')
        edit(c / "autoload_configs/switch.conf.xml", '<!-- <param name="rtp-start-port" value="16384"/> -->',
             f'<param name="rtp-start-port" value="{self.rtp}"/>')
        edit(c / "autoload_configs/switch.conf.xml", '<!-- <param name="rtp-end-port" value="32768"/> -->',
             f'<param name="rtp-end-port" value="{self.rtp + 199}"/>')
        edit(c / "autoload_configs/event_socket.conf.xml", 'value="8021"', f'value="{p["esl"]}"')
        edit(c / "dialplan/public/50_esl_cb.xml", 'data="127.0.0.1:8084 async full"',
             f'data="127.0.0.1:{p["socket"]} async full"')
        features = c / "dialplan/default/60_esl_cb_features.xml"
        features.write_text(features.read_text().replace('data="127.0.0.1:8084 async full"',
                                                         f'data="127.0.0.1:{p["socket"]} async full"'))

    def start(self, timeout: float = 30.0) -> None:
        r = self.root
        folders = {f: r / f for f in ("log", "db", "run", "temp", "storage", "recordings", "cache")}
        for d in folders.values():
            d.mkdir()
        args = [FREESWITCH, "-nf", "-nc", "-np", "-nonat", "-nonatmap", "-conf", str(self.conf),
                "-certs", str(self.conf / "tls")]           # an installed switch keeps them there
        for name, d in folders.items():
            args += [f"-{name}", str(d)]
        deadline = time.monotonic() + timeout
        self.proc = subprocess.Popen(args, stdout=(r / "log" / "stdout.log").open("ab"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"FreeSWITCH exited at start ({self.proc.returncode}); see {r / 'log'}")
            try:
                self.api("status")          # ESL accepts auth with the drop-in's password
                return
            except (ESLError, OSError):
                gevent.sleep(0.05)
        raise RuntimeError(f"FreeSWITCH did not accept ESL auth within {timeout}s; see {r / 'log'}")

    def api(self, cmd: str, timeout: float = 10.0) -> str:
        if self._esl is None or not self._esl.connected:
            self._esl = InboundConnection("127.0.0.1", self.ports["esl"], self.password, lambda e: None, timeout=5)
            self._esl.connect([])
        return self._esl.api(cmd, timeout=timeout).strip()

    def log_text(self) -> str:
        return (self.root / "log" / "freeswitch.log").read_text(errors="replace")

    def stop(self) -> None:
        if self._esl is not None:
            self._esl.close()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def require_vanilla() -> None:
    """The tools and the stock configuration: skipped where missing, a failure under CI."""
    require_tools()
    if not (VANILLA / "freeswitch.xml").is_file():
        reason = f"no stock configuration at {VANILLA} (set ESL_CB_FREESWITCH_CONF)"
        if REQUIRED:
            pytest.fail(f"ESL_CB_REQUIRE_FREESWITCH=1 but {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def vanilla(tmp_path_factory):
    require_vanilla()
    switch = VanillaSwitch(tmp_path_factory.mktemp("vanilla"))
    try:
        switch.start()
        yield switch
    finally:
        switch.stop()


# -- helpers: what FreeSWITCH binds, esl-cb's stand-in, SIP callers ---------------------------------
def _proc_net_address(hex_address: str) -> tuple[str, int]:
    ip, port = hex_address.split(":")
    raw = bytes.fromhex(ip)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words), int(port, 16)


def bound_sockets(pid: int) -> set[tuple[str, str, int]]:
    """(tcp|udp, address, port) of every TCP socket the process listens on and every UDP socket it bound."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(fd))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    found = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            f = line.split()
            if f[9] in inodes and (table.startswith("udp") or f[3] == "0A"):      # 0A: LISTEN
                address, port = _proc_net_address(f[1])
                found.add((table[:3], address, port))
    return found


class SocketTarget:
    """Stands in for esl-cb's outbound-socket server: accepts FreeSWITCH's connection and reads the call."""

    def __init__(self, port: int) -> None:
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", port))
        self.server.listen(8)

    def call(self, timeout: float) -> tuple[socket.socket, dict[str, str]] | None:
        """The next call's connection and channel data, or None if none came within `timeout`."""
        self.server.settimeout(timeout)
        try:
            conn, _ = self.server.accept()
        except TimeoutError:
            return None
        conn.settimeout(5)
        conn.sendall(b"connect\n\n")
        data = b""
        while b"\n\n" not in data:
            chunk = conn.recv(65536)
            assert chunk, "FreeSWITCH closed the socket before sending the channel data"
            data += chunk
        head = data.split(b"\n\n", 1)[0].decode()
        return conn, {k: url_decode(v) for k, _, v in (line.partition(": ") for line in head.splitlines())}

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def target(vanilla):
    t = SocketTarget(vanilla.ports["socket"])
    yield t
    t.close()
    vanilla.api("hupall NORMAL_CLEARING")


INVITE = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="carrier call">
  <send retrans="500"><![CDATA[
      INVITE sip:@RURI_USER@@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:+13125550111@[local_ip]:[local_port]>;tag=[pid]c[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:+13125550111@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=carrier 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200"/>
  <send><![CDATA[
      ACK sip:@RURI_USER@@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:+13125550111@[local_ip]:[local_port]>;tag=[pid]c[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
  <recv request="BYE"/>
  <send><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
  ]]></send>
</scenario>
"""

REGISTER = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="agent phone registers">
  <send retrans="500"><![CDATA[
      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[service]@[remote_ip]>;tag=[pid]r[call_number]
      To: <sip:[service]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 1 REGISTER
      Contact: <sip:[service]@127.0.0.1:@PHONE_PORT@>
      Expires: 300
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
  <recv response="401" auth="true"/>
  <send retrans="500"><![CDATA[
      REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:[service]@[remote_ip]>;tag=[pid]r[call_number]
      To: <sip:[service]@[remote_ip]>
      Call-ID: [call_id]
      CSeq: 2 REGISTER
      Contact: <sip:[service]@127.0.0.1:@PHONE_PORT@>
      [authentication]
      Expires: 300
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
  <recv response="200"/>
</scenario>
"""


def sipp(root: Path, name: str, scenario: str, service: str, port: int, *extra: str) -> subprocess.Popen:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.xml").write_text(scenario)
    return subprocess.Popen(
        ["sipp", "-sf", f"{name}.xml", "-i", "127.0.0.1", "-p", str(free_port()), "-mi", "127.0.0.1",
         "-mp", str(free_port()), "-s", service, f"127.0.0.1:{port}", "-m", "1", "-nostdin", "-trace_err",
         "-trace_msg", "-timeout", "15", *extra],
        cwd=root, stdout=(root / f"{name}.out").open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def carrier_call(vanilla, name: str, did: str, request_user: str | None = None) -> subprocess.Popen:
    """A call as a carrier sends it, to the external profile (the public context)."""
    scenario = INVITE.replace("@RURI_USER@", request_user or "[service]")
    return sipp(vanilla.root / "sip", name, scenario, did, vanilla.ports["external_sip"])


def sip_lines(vanilla, name: str, start: str) -> list[str]:
    """First lines of the SIP messages SIPp's trace of call `name` has, that begin with `start`."""
    return [line for log in (vanilla.root / "sip").glob(f"{name}_*_messages.log")
            for line in log.read_text(errors="replace").splitlines() if line.startswith(start)]


def ended_by_the_switch(vanilla, name: str, caller: subprocess.Popen) -> None:
    """The call was answered and the switch hung it up (SIPp itself lingers ~10 s after its last message)."""
    try:
        wait_until(lambda: sip_lines(vanilla, name, "BYE sip:"), 10, what=f"the switch's BYE to {name}")
        assert sip_lines(vanilla, name, "SIP/2.0 200 OK")
    finally:
        caller.kill()
        caller.wait(5)


def hang_up(conn: socket.socket) -> None:
    """esl-cb's stand-in hangs the call up, as esl-cb does, and closes the socket. (Closing alone, right
    after `connect`, now and then leaves a SIP call parked in the socket application until hupall.)"""
    try:
        conn.sendall(b"sendmsg\ncall-command: hangup\nhangup-cause: NORMAL_CLEARING\n\n")
        data = b""
        while b"Reply-Text:" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        conn.close()


# -- the tests --------------------------------------------------------------------------------------
def test_every_listener_is_on_loopback(vanilla):
    bound = bound_sockets(vanilla.proc.pid)
    assert bound, "no socket found for the FreeSWITCH process"
    assert {address for _, address, _ in bound} <= LOOPBACK, sorted(bound)
    ports = {port for _, _, port in bound}
    assert {vanilla.ports[n] for n in ("esl", "internal_sip", "external_sip", "ws", "wss")} <= ports
    assert not ports & {5060, 5061, 5066, 5080, 5081, 7443, 8021}, sorted(bound)


def test_event_socket_listens_on_127_0_0_1_only_with_our_password(vanilla):
    esl = {(proto, address) for proto, address, port in bound_sockets(vanilla.proc.pid) if port == vanilla.ports["esl"]}
    assert esl == {("tcp", "127.0.0.1")}
    assert "is ready" in vanilla.api("status")                  # the fixture's connection used our password
    with socket.create_connection(("127.0.0.1", vanilla.ports["esl"]), timeout=5) as s:
        s.recv(1000)
        s.sendall(b"auth not-" + vanilla.password.encode() + b"\n\n")
        assert b"-ERR invalid" in s.recv(1000)


def test_agent_user_is_added_and_vanilla_users_are_untouched(vanilla):
    domain = vanilla.api("global_getvar domain")
    assert domain == "127.0.0.1"
    assert vanilla.api(readme_command("user_exists id 7001").replace("$DOMAIN", domain)) == "true"
    assert vanilla.api(f"user_data {AGENT}@{domain} param password") == AGENT_PASSWORD
    default_password = re.search(r'data="default_password=([^"]*)"', (VANILLA / "vars.xml").read_text()).group(1)
    assert vanilla.api(readme_command("user_data 1001@").replace("$DOMAIN", domain)) == default_password
    vanilla_ids = [m for f in sorted((VANILLA / "directory/default").glob("*.xml"))
                   for m in re.findall(r'<user id="(\d+)"', f.read_text())]
    assert len(vanilla_ids) >= 20 and AGENT not in vanilla_ids
    for uid in vanilla_ids:
        assert vanilla.api(f"user_data {uid}@{domain} param password") == default_password, uid


def test_user_dial_string_rings_the_registered_agent_phone(vanilla):
    assert vanilla.api(readme_command("originate user/7001")) == "-ERR USER_NOT_REGISTERED"
    phones = Phones(vanilla.root / "phones")                    # answers users ending in 1 (tests/freeswitch/sipp)
    try:
        reg = sipp(vanilla.root / "phones", "register", REGISTER.replace("@PHONE_PORT@", str(phones.port)), AGENT,
                   vanilla.ports["internal_sip"], "-au", AGENT, "-ap", AGENT_PASSWORD)
        assert reg.wait(10) == 0, "the agent phone could not register with the agent file's password"
        assert vanilla.api(readme_command("sofia_contact 7001")).startswith(f"sofia/internal/sip:{AGENT}@127.0.0.1:")
        reply = vanilla.api(readme_command("originate user/7001"), timeout=15)
        assert reply.startswith("+OK "), reply                  # the phone answered
        assert vanilla.api(f"uuid_getvar {reply[4:]} sip_req_uri") == f"{AGENT}@127.0.0.1:{phones.port}"
    finally:
        vanilla.api("hupall NORMAL_CLEARING")
        phones.stop()


def test_pstn_gateway_is_on_the_external_profile_as_shipped(vanilla):
    gateway = ET.parse(DROP_IN / "sip_profiles/external/esl_cb_pstn.xml").getroot().find("gateway")
    register = {p.get("name"): p.get("value") for p in gateway.iter("param")}["register"]
    status = dict(line.split("\t", 1) for line in vanilla.api(readme_command("sofia status gateway pstn")).splitlines()
                  if "\t" in line)
    status = {k.strip(): v.strip() for k, v in status.items()}
    assert status["Name"] == "pstn" and status["Profile"] == "external"
    assert status["Realm"] == f"127.0.0.1:{vanilla.ports['carrier']}"
    assert status["State"] == ("NOREG" if register == "false" else "REGED")
    assert status["Context"] == "public"


def test_a_carriers_call_to_a_did_reaches_the_socket_application(vanilla, target):
    caller = carrier_call(vanilla, "did", DID)
    got = target.call(timeout=10)
    assert got is not None, "FreeSWITCH never connected to the socket target"
    conn, data = got
    assert data["Caller-Destination-Number"] == DID
    assert data["Caller-Context"] == "public"
    assert data["variable_sofia_profile_name"] == "external"
    assert data["Answer-State"] == "answered"
    hang_up(conn)
    ended_by_the_switch(vanilla, "did", caller)


def test_a_did_the_pattern_does_not_take_never_reaches_it(vanilla, target):
    caller = carrier_call(vanilla, "other", OTHER_DID)
    caller.wait(10)
    assert sip_lines(vanilla, "other", "SIP/2.0 480"), sip_lines(vanilla, "other", "SIP/2.0")
    assert target.call(timeout=0.5) is None
    assert f"Regex (FAIL) [esl_cb_queue] destination_number({OTHER_DID})" in vanilla.log_text()


def test_readme_check_of_a_did(vanilla, target):
    check = readme_command("originate loopback/")
    assert DID in check
    job = gevent.spawn(vanilla.api, check, 15)
    got = target.call(timeout=10)
    assert got is not None, "the README's test call never reached the socket target"
    conn, data = got
    assert data["Caller-Destination-Number"] == DID and data["Caller-Context"] == "public"
    assert job.get(timeout=10).startswith("+OK")
    hang_up(conn)
    assert vanilla.api(check.replace(DID, OTHER_DID), 15) == "-ERR NORMAL_CLEARING"
    assert target.call(timeout=0.5) is None


def test_event_socket_reload_is_refused_while_a_call_is_in_the_socket_app(vanilla, target):
    """Why README step 5 restarts FreeSWITCH: `reload mod_event_socket` answers +OK and changes nothing."""
    job = gevent.spawn(vanilla.api, readme_command("originate loopback/"), 15)
    conn, _ = target.call(timeout=10)
    assert job.get(timeout=10).startswith("+OK")
    assert vanilla.api("reload mod_event_socket").startswith("+OK")
    wait_until(lambda: "Module mod_event_socket is in use, cannot unload" in vanilla.log_text(), 5, what="refusal")
    hang_up(conn)


def test_registering_trunk_shape_with_auto_to_user_routes_dids(vanilla, target):
    """Shape B of the gateway file, applied with README's killgw + rescan, takes a carrier's call to its
    registered contact (gw+pstn) by the To header's number."""
    gateway = vanilla.conf / "sip_profiles/external/esl_cb_pstn.xml"
    shipped = gateway.read_text()
    shape_b, shape_a = re.findall(r'  <gateway name="pstn">.*?</gateway>', shipped, re.DOTALL)
    carrier = f"127.0.0.1:{vanilla.ports['carrier']}"
    filled = (shape_b.replace("sip.your-carrier.example", carrier).replace("YOUR_ACCOUNT", "esl-cb")
              .replace("YOUR_PASSWORD", "secret"))

    def apply() -> None:
        for command in ("reloadxml", readme_command("sofia profile external killgw"),
                        readme_command("sofia profile external rescan")):
            reply = vanilla.api(command)
            assert "+OK" in reply, (command, reply)

    gateway.write_text(shipped.replace(shape_a, filled))
    try:
        apply()
        status = vanilla.api("sofia status gateway pstn")
        assert re.search(r"^Exten\s+auto_to_user$", status, re.MULTILINE), status
        caller = carrier_call(vanilla, "registered", DID, request_user="gw+pstn")
        got = target.call(timeout=10)
        assert got is not None, "a call to the gateway's contact did not reach the socket target"
        conn, data = got
        assert data["Caller-Destination-Number"] == DID
        hang_up(conn)
        ended_by_the_switch(vanilla, "registered", caller)
    finally:
        gateway.write_text(shipped)
        apply()
    assert re.search(r"^State\s+NOREG$", vanilla.api("sofia status gateway pstn"), re.MULTILINE)


AGENT_INVITE = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!DOCTYPE scenario SYSTEM "sipp.dtd">
<scenario name="an agent's phone dials a feature code (digest authentication, as a phone does)">
  <send retrans="500"><![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:@AGENT@@[remote_ip]>;tag=[pid]a[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:@AGENT@@[local_ip]:[local_port]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=phone 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="407" auth="true"/>
  <send><![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      From: <sip:@AGENT@@[remote_ip]>;tag=[pid]a[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
  <send retrans="500"><![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:@AGENT@@[remote_ip]>;tag=[pid]a[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 2 INVITE
      Contact: <sip:@AGENT@@[local_ip]:[local_port]>
      [authentication]
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=phone 1 1 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
  ]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200"/>
  <send><![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:@AGENT@@[remote_ip]>;tag=[pid]a[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 ACK
      Max-Forwards: 70
      Content-Length: 0
  ]]></send>
  <recv request="BYE"/>
  <send><![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
  ]]></send>
</scenario>
"""


@pytest.mark.parametrize("code,feature,arg", [("*24", "available", ""), ("*2507", "break", "07")])
def test_an_agents_feature_code_reaches_esl_cb_with_a_trusted_caller_id(vanilla, target, code, feature, arg):
    """The drop-in feature codes in vanilla's default context: the agent's phone (user 7001 of the
    drop-in, digest-authenticated as phones are) dials a code; esl-cb is handed the call with the
    feature, its reason code, esl_cb_trust_caller_id and the directory user it authenticated as.
    Measured: while vars.xml keeps default_password=1234, vanilla's default context logs a warning and
    sleeps 10 s before any later extension runs (freeswitch_conf/README.md says so)."""
    name = f"feature{feature}"
    caller = sipp(vanilla.root / "sip", name, AGENT_INVITE.replace("@AGENT@", AGENT), code,
                  vanilla.ports["internal_sip"], "-au", AGENT, "-ap", AGENT_PASSWORD, "-timeout", "40")
    got = target.call(timeout=25)
    assert got is not None, "FreeSWITCH never handed the feature code to the socket target"
    conn, data = got
    assert data["Caller-Context"] == "default" and data["Caller-Caller-ID-Number"] == AGENT
    assert data["variable_esl_cb_feature"] == feature and data["variable_esl_cb_trust_caller_id"] == "true"
    assert data["variable_user_name"] == AGENT                  # who authenticated: what esl-cb trusts
    assert data.get("variable_esl_cb_feature_arg", "") == arg
    hang_up(conn)
    ended_by_the_switch(vanilla, name, caller)


def _feature_call(vanilla, name: str, code: str, from_user: str, auth_user: str, password: str) -> subprocess.Popen:
    """A registered phone's INVITE for a feature code: From `from_user`, digest-authenticated as `auth_user`."""
    return sipp(vanilla.root / "sip", name, AGENT_INVITE.replace("@AGENT@", from_user), code,
                vanilla.ports["internal_sip"], "-au", auth_user, "-ap", password, "-timeout", "60")


def test_a_feature_code_trusts_the_authenticated_user_not_the_caller_id_the_phone_sends(vanilla, pg_url):
    """Any phone of the directory (vanilla: 1000-1019, password 1234) may send a From of another agent's
    number while it authenticates as itself; FreeSWITCH builds the caller ID from what the phone sends
    (measured: Caller-Caller-ID-Number 7001, user_name and sip_auth_username 1000). esl-cb (its real
    feature-code handler on the drop-in's trusted codes) must not log agent 7001 out for it: the caller
    is asked for the login number and PIN. The agent's own phone, authenticated as 7001, still is."""
    from esl_cb.controller.features import FeatureCalls
    from esl_cb.db.store import Store
    from esl_cb.domain.states import AgentState
    from esl_cb.esl.outbound import CallServer
    from sqlalchemy import text

    store = Store(pg_url, "test")
    store.add_agent("ann", f"user/{AGENT}", ["support"])
    store.set_agent_state("ann", AgentState.AVAILABLE, list(AgentState))
    server = CallServer("127.0.0.1", vanilla.ports["socket"], FeatureCalls(store).on_call)
    server.bind()
    listening = gevent.spawn(server.listen)
    try:
        default_password = re.search(r'data="default_password=([^"]*)"', (VANILLA / "vars.xml").read_text()).group(1)
        spoof = _feature_call(vanilla, "spoof", "*23", AGENT, "1000", default_password)
        ended_by_the_switch_within(vanilla, "spoof", spoof, 50)     # default_password's 10 s, keys' 8 s
        assert store.agent("ann").state == "Available", "a spoofed From logged the agent out"
        assert "vm-enter_id" in vanilla.log_text(), "the spoofing phone was not asked for the login number"
        with store.engine.connect() as conn:
            audit = list(conn.execute(text("SELECT operator FROM audit_log WHERE target = 'ann'")).scalars())
        assert not [a for a in audit if a and a.startswith("phone")], audit

        honest = _feature_call(vanilla, "honest", "*23", AGENT, AGENT, AGENT_PASSWORD)
        wait_until(lambda: store.agent("ann").state == "LoggedOut", 40, what="ann logged out from her own phone")
        ended_by_the_switch_within(vanilla, "honest", honest, 30)
    finally:
        server.stop()
        listening.kill()
        vanilla.api("hupall NORMAL_CLEARING")
        store.engine.dispose()


def ended_by_the_switch_within(vanilla, name: str, caller: subprocess.Popen, timeout: float) -> None:
    try:
        wait_until(lambda: sip_lines(vanilla, name, "BYE sip:"), timeout, what=f"the switch's BYE to {name}")
        assert sip_lines(vanilla, name, "SIP/2.0 200 OK")
    finally:
        caller.kill()
        caller.wait(5)


def test_registration_events_name_the_directory_domain_when_the_phone_registers_to_the_ip(tmp_path):
    """A switch whose domain is a name (vars.xml domain=pbx.test) and a phone that registers to its IP
    (From/To host 127.0.0.1), then un-registers: both events must name the same domain, the directory's
    (measured: register to-host and realm 127.0.0.1, from-host pbx.test; un-register from-host pbx.test,
    no to-host), or the registration is stored under one and the un-register looks under the other."""
    from esl_cb.domain.phones import registration_event

    require_vanilla()
    switch = VanillaSwitch(tmp_path / "named")
    edit(switch.conf / "vars.xml", 'data="domain=$${local_ip_v4}"', 'data="domain=pbx.test"')
    seen: list = []
    phones = None
    try:
        switch.start()
        assert switch.api("global_getvar domain") == "pbx.test"
        conn = InboundConnection("127.0.0.1", switch.ports["esl"], switch.password, seen.append, timeout=5)
        conn.connect(["CUSTOM", "sofia::register", "sofia::unregister"])
        phones = Phones(switch.root / "phones")
        scenario = REGISTER.replace("@PHONE_PORT@", str(phones.port))
        default_password = re.search(r'data="default_password=([^"]*)"', (VANILLA / "vars.xml").read_text()).group(1)
        for name, text_ in (("register", scenario), ("unregister", scenario.replace("Expires: 300", "Expires: 0"))):
            reg = sipp(switch.root / "phones", name, text_, "1000", switch.ports["internal_sip"], "-au", "1000",
                       "-ap", default_password, "-cid_str", "named-domain-1000")
            assert reg.wait(15) == 0, f"{name} failed"
        events = wait_until(lambda: [e for e in seen if e.get("Event-Subclass")] if len(seen) >= 2 else None, 10,
                            what="the register and unregister events")
        got = [registration_event(e.get("Event-Subclass"), lambda k, e=e: e.get(k) or "") for e in events]
        assert [(g.kind, g.user, g.domain) for g in got] == [("register", "1000", "pbx.test"),
                                                             ("unregister", "1000", "pbx.test")], \
            [{k: e.get(k) for k in ("to-host", "from-host", "realm")} for e in events]
        conn.close()
    finally:
        if phones is not None:
            phones.stop()
        switch.stop()
