"""Replay a recorded FreeSWITCH conversation against the simulator and compare what comes back.

The client side of each capture is sent as recorded. Each client frame waits
until every frame FreeSWITCH had sent before it (on any connection) has arrived
from the simulator. Frames are then compared per connection:

- replies, api responses and notices in order;
- events in order per channel (non-channel events per name);
- header names and their order exactly; values exactly, except values that
  are legitimately random (uuids, times, counters, SIP tokens), which are
  compared by shape.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid as uuidlib
from collections import defaultdict
from pathlib import Path
from urllib.parse import unquote

import gevent

from esl_cb.esl.wire import FrameReader

CAPTURES = Path(__file__).with_name("captures")
# Captures recorded after tests/captures was filled live in the shared folder beside the repository
# (CI has a copy of it too); ESL_CB_CAPTURES points elsewhere.
SHARED_CAPTURES = Path(os.environ.get("ESL_CB_CAPTURES", Path(__file__).resolve().parents[2] / "shared" / "esl-captures"))
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Values that a second real call would not repeat either: compared by shape only.
RANDOM_HEADERS = re.compile(
    r"^(Content-Length|Core-UUID|Event-Date-.*|Event-Sequence|.*-Time|.*_(stamp|epoch|uepoch|sec|msec|usec)|"
    r"variable_(.*sec|.*duration|sip_call_id|sip_from_tag|sip_to_tag|sip_cseq|sip_full_.*|"
    r"sip_.*_via|rtp_.*|switch_r_sdp|local_media_port|remote_media_port|session_id|"
    r"sip_received_port|sip_network_port|sip_contact_port|sip_from_port|sip_reply_port|"
    r"playback_.*|DP_MATCH|call_uuid|.*_uuid|hold_accum_.*)|Up-Time|Uptime-msec|Idle-CPU|"
    r"Session-.*|Task-Runtime|Job-Command-Arg|API-Command-Argument|Application-UUID|Other-Leg-.*-Time)$")


# Variables set from what the SIP peer sent. The calling UACs of captures 07 and 08 were
# different SIPp scenarios: 08's sends two more headers and sofia stores the SIP variables
# in a different order. So the variable_sip_* of a caller's leg are compared as a set.
PEER_DEPENDENT = {"variable_sip_to_tag", "variable_sip_cseq"}


def peer_filtered(headers: list[tuple[str, str]], inbound_leg: bool) -> list[tuple[str, str]]:
    if not inbound_leg:
        return [h for h in headers if h[0] not in PEER_DEPENDENT]
    return [h for h in headers if h[0] not in PEER_DEPENDENT and not h[0].startswith("variable_sip_")]


def shape(value: str) -> str:
    """Strict shape: uuids and numbers may differ, nothing else."""
    value = UUID.sub("U", value)
    return re.sub(r"[0-9]+", "9", value)


def loose_shape(value: str) -> str:
    """For the named random headers (SIP tags, dates): letters may differ too."""
    return re.sub(r"[A-Za-z]+", "a", shape(value))


def capture_path(name: str) -> Path | None:
    for folder in (CAPTURES, SHARED_CAPTURES):
        if (folder / name).is_file():
            return folder / name
    return None


def load(name: str) -> list[dict]:
    path = capture_path(name)
    if path is None:
        raise FileNotFoundError(f"capture {name} is in neither {CAPTURES} nor {SHARED_CAPTURES}")
    return [json.loads(line) for line in path.open()]


def headers_of(block: str) -> list[tuple[str, str]]:
    out = []
    for line in block.split("\n"):
        if line:
            k, _, v = line.partition(": ")
            out.append((k, unquote(v)))
    return out


class Parsed:
    """One frame, split into what comparison needs."""

    def __init__(self, raw: str) -> None:
        self.raw = raw
        head, _, body = raw.partition("\n\n")
        self.outer = headers_of(head)
        self.ctype = dict(self.outer).get("Content-Type", "")
        self.body = body
        self.event: list[tuple[str, str]] | None = None
        self.inner_body = ""
        if self.outer and self.outer[0][0] == "Event-Name":     # the outbound 'connect' reply
            self.event = self.outer
        elif self.ctype == "text/event-plain":
            block, _, rest = body.partition("\n\n")
            self.event = headers_of(block)
            self.inner_body = rest
        elif self.ctype == "text/event-json":
            obj = json.loads(body)
            self.inner_body = obj.pop("_body", "")
            self.event = list(obj.items())
        elif self.ctype == "text/event-xml":
            self.event = [(m.group(1), unquote(m.group(2)))
                          for m in re.finditer(r"<([\w-]+)>([^<]*)</\1>", body.split("</headers>")[0])]
            self.inner_body = body.split("<body>")[1].rsplit("  </body>", 1)[0] if "<body>" in body else ""

    def get(self, name: str) -> str:
        for k, v in self.event or self.outer:
            if k == name:
                return v
        return ""

    @property
    def key(self) -> str:
        if self.event is None:
            return "reply"
        uid = self.get("Unique-ID")
        return uid or self.get("Event-Name")


class Client:
    """One recorded connection, reading frames from the simulator in the background."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frames: list[Parsed] = []
        self.eof = gevent.event.Event()
        self.reader = gevent.spawn(self._read)

    def _read(self) -> None:
        fr = FrameReader()
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.eof.set()
                return
            for f in fr.feed(data):
                head = "".join(f"{k}: {v}\n" for k, v in f.headers)
                if f.get("Content-Type") is None and f.headers and f.headers[0][0] == "Event-Name":
                    head = "".join(f"{k}: {v}\n" for k, v in f.headers)
                self.frames.append(Parsed(head + "\n" + f.body.decode()))

    def send(self, raw: str) -> None:
        self.sock.sendall(raw.encode())


def expected_uuid_pairs(expected: Parsed, actual: Parsed) -> list[tuple[str, str]]:
    exp = UUID.findall(expected.raw)
    act = UUID.findall(actual.raw)
    return list(zip(exp, act)) if len(exp) == len(act) else []


def replay(name: str, sim, plan_for_call=None, timeout: float = 15.0) -> dict[str, tuple[list, list]]:
    """Drive the simulator with the client side of a capture; return {conn: (expected, actual)}."""
    records = load(name)[1:]
    clients: dict[str, Client] = {}
    expected: dict[str, list[Parsed]] = defaultdict(list)
    uuid_map: dict[str, str] = {}
    listener = None
    if any(r.get("event") == "tcp-accepted" for r in records):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        sim.switch.socket_target = listener.getsockname()

    def learn() -> None:
        for c, exp in expected.items():
            got = clients[c].frames if c in clients else []
            for e, a in zip(exp, got):
                if e.ctype in ("api/response", "command/reply") or e.get("Event-Name") == "CHANNEL_DATA" \
                        or e.get("Content-Disposition"):
                    for x, y in expected_uuid_pairs(e, a):
                        uuid_map.setdefault(x, y)

    def wait_for(counts: dict[str, int]) -> None:
        with gevent.Timeout(timeout, AssertionError(f"{name}: simulator did not send the frames "
                                                     f"expected before this point: {counts}")):
            while any(len(clients[c].frames) < n for c, n in counts.items() if c in clients):
                gevent.sleep(0.005)

    for r in records:
        conn = r.get("conn")
        if r["dir"] == "meta":
            ev = r.get("event")
            if ev == "tcp-connected":
                clients[conn] = Client(socket.create_connection(sim.address))
            elif ev == "tcp-accepted":
                from esl_cb.sim import api
                api.execute(sim.switch, "sim", "call 3125550199 5000 " + (plan_for_call or ""))
                s, _ = listener.accept()
                clients[conn] = Client(s)
            elif ev == "eof":
                wait_for({conn: len(expected[conn])})
                assert clients[conn].eof.wait(timeout), f"{name}: conn {conn} was not closed by the switch"
            elif ev == "client-closed":
                clients[conn].sock.close()
            continue
        if r["dir"] == "in":
            p = Parsed(r["raw"])
            expected[conn].append(p)
            if p.get("Event-Name") == "HEARTBEAT":
                # The 20 s timer fired here in the recording: fire ours at the same point.
                wait_for({c: len(v) - (c == conn) for c, v in expected.items()})
                sim.switch.emit_heartbeat()
            continue
        wait_for({c: len(v) for c, v in expected.items()})
        learn()
        raw = UUID.sub(lambda m: uuid_map.get(m.group(0), m.group(0)), r["raw"])
        clients[conn].send(raw)
    wait_for({c: len(v) for c, v in expected.items()})
    gevent.sleep(0.3)   # anything extra the simulator would send shows up as a difference
    if listener is not None:
        listener.close()
    learn()
    result = {c: (expected[c], clients[c].frames) for c in expected}
    result["_uuid_map"] = uuid_map
    return result


def differences(name: str, result: dict[str, tuple[list, list]], skip_keys: set[str] = frozenset()) -> list[str]:
    """Everything that differs, as readable lines (empty when the replay matched)."""
    diffs: list[str] = []
    uuid_map = result.get("_uuid_map", {})
    for conn, pair in result.items():
        if conn == "_uuid_map":
            continue
        exp, act = pair
        def groups(frames):
            g = defaultdict(list)
            apis = []
            for f in frames:
                if f.get("Event-Name") == "API":
                    apis.append(f.get("API-Command"))
                    continue
                if f.event is not None and f.get("Event-Name") in skip_keys:
                    continue
                g[f.key if f.event is not None else "reply"].append(f)
            return g, sorted(apis)
        ge, apis_e = groups(exp)
        ga, apis_a = groups(act)
        # An API event is delivered late (after later commands' replies): a recording that
        # ends soon after a command may lack it, so only missing ones count.
        missing_apis = [a for a in set(apis_e) if apis_e.count(a) > apis_a.count(a)]
        if missing_apis:
            diffs.append(f"{conn}: API events missing {missing_apis}: {apis_e} vs {apis_a}")
        keys_e = list(ge)
        keys_a = [uuid_map.get(k, k) for k in keys_e]
        # Sessions the switch names itself (no origination_uuid) pair up in order of appearance.
        spare = iter([k for k in ga if k not in keys_a and UUID.fullmatch(k)])
        keys_a = [k if (k in ga or not UUID.fullmatch(k)) else next(spare, k) for k in keys_a]
        extra = [k for k in ga if k not in keys_a]
        if extra:
            diffs.append(f"{conn}: streams nobody expected: {extra}")
        for ke, ka in zip(keys_e, keys_a):
            fe, fa = ge[ke], ga.get(ka, [])
            names_e = [f.get("Event-Name") or f.ctype for f in fe]
            names_a = [f.get("Event-Name") or f.ctype for f in fa]
            if names_e != names_a:
                diffs.append(f"{conn}/{ke[:8]}: frames {names_e} != {names_a}")
                continue
            for i, (e, a) in enumerate(zip(fe, fa)):
                diffs.extend(f"{conn}/{ke[:8]}#{i} {names_e[i]}: {d}" for d in compare(e, a))
    return diffs


def compare(e: Parsed, a: Parsed) -> list[str]:
    out = []
    inbound_leg = e.get("Call-Direction") == "inbound"
    outer_e = peer_filtered(e.outer, inbound_leg)
    outer_a = peer_filtered(a.outer, inbound_leg)
    if [k for k, _ in outer_e] != [k for k, _ in outer_a]:
        out.append(f"frame headers {[k for k, _ in outer_e]} != {[k for k, _ in outer_a]}")
    for (k, ve), (_, va) in zip(outer_e, outer_a):
        if k in ("Content-Length", "Controlled-Session-UUID", "Job-UUID", "Reply-Text") or k == "Event-Name":
            if k == "Reply-Text" and shape(ve) != shape(va):
                out.append(f"Reply-Text {ve!r} != {va!r}")
            continue
        if e.event is None and ve != va and shape(ve) != shape(va):
            out.append(f"{k}: {ve!r} != {va!r}")
    if e.event is None:
        if e.ctype == "api/response" and e.body != a.body and shape(e.body) != shape(a.body):
            out.append(f"body {e.body!r} != {a.body!r}")
        return out
    sip_e = {k for k, _ in e.event if k.startswith("variable_sip_") and k not in PEER_DEPENDENT}
    sip_a = {k for k, _ in a.event if k.startswith("variable_sip_") and k not in PEER_DEPENDENT}
    if inbound_leg and sip_e != sip_a:
        out.append(f"SIP variables differ: missing {sorted(sip_e - sip_a)} extra {sorted(sip_a - sip_e)}")
    ne = [k for k, _ in peer_filtered(e.event, inbound_leg)]
    na = [k for k, _ in peer_filtered(a.event, inbound_leg)]
    if ne != na:
        missing = [k for k in ne if k not in na]
        extra = [k for k in na if k not in ne]
        at = next((i for i, (x, y) in enumerate(zip(ne, na)) if x != y), min(len(ne), len(na)))
        out.append(f"header names differ: missing {missing[:8]} extra {extra[:8]}"
                   + ("" if missing or extra else f" (order at {at}: {ne[at-1:at+3]} vs {na[at-1:at+3]})"))
        return out
    for (k, ve), (_, va) in zip(peer_filtered(e.event, inbound_leg), peer_filtered(a.event, inbound_leg)):
        if ve == va:
            continue
        if RANDOM_HEADERS.match(k) or UUID.fullmatch(ve) or ve.endswith(" async full"):
            if loose_shape(ve) != loose_shape(va) and not (RANDOM_HEADERS.match(k) and ve.isdigit() == va.isdigit()):
                out.append(f"{k}: {ve!r} !~ {va!r}")
            continue
        out.append(f"{k}: {ve!r} != {va!r}")
    if e.inner_body != a.inner_body and shape(e.inner_body) != shape(a.inner_body):
        out.append(f"body {e.inner_body!r} != {a.inner_body!r}")
    return out


class SocketCall:
    """One call a switch hands to us with 'socket ADDR async full': a tiny outbound-socket server,
    the same against the simulator and the real FreeSWITCH (tests/test_*_learned.py)."""

    def __init__(self, listener: socket.socket, timeout: float = 15.0) -> None:
        listener.settimeout(timeout)
        sock, _ = listener.accept()
        sock.settimeout(None)
        self.client = Client(sock)
        self.timeout = timeout
        self.send("connect\n\n")
        self.channel = self._wait(lambda f: f.get("Event-Name") == "CHANNEL_DATA")
        self.uuid = self.channel.get("Unique-ID")
        self.send("myevents\n\n")
        self.send("linger\n\n")

    def send(self, raw: str) -> None:
        self.client.send(raw)

    def _wait(self, match, start: int = 0) -> Parsed:
        with gevent.Timeout(self.timeout, AssertionError("the switch did not send the frame waited for")):
            while True:
                for f in self.client.frames[start:]:
                    if match(f):
                        return f
                gevent.sleep(0.002)

    def execute(self, app: str, arg: str = "") -> tuple[float, Parsed]:
        """Run one application; (seconds until its CHANNEL_EXECUTE_COMPLETE, that event)."""
        event_uuid = str(uuidlib.uuid4())
        start = len(self.client.frames)
        sent = time.monotonic()
        self.send(f"sendmsg\ncall-command: execute\nexecute-app-name: {app}\nexecute-app-arg: {arg}\n"
                  f"Event-UUID: {event_uuid}\n\n")
        done = self._wait(lambda f: f.get("Event-Name") == "CHANNEL_EXECUTE_COMPLETE"
                          and f.get("Application-UUID") == event_uuid, start)
        return time.monotonic() - sent, done

    def api(self, cmd: str) -> str:
        start = len(self.client.frames)
        self.send(f"api {cmd}\n\n")
        return self._wait(lambda f: f.ctype == "api/response", start).body

    def hangup(self) -> None:
        self.send("sendmsg\ncall-command: execute\nexecute-app-name: hangup\nexecute-app-arg: NORMAL_CLEARING\n\n")
        try:
            self._wait(lambda f: f.get("Content-Disposition") == "linger")
        finally:
            self.send("exit\n\n")
            self.client.eof.wait(5)
            self.client.sock.close()
