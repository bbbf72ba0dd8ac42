#!/usr/bin/env python3
"""Packet timestamps on loopback, for the real-switch benchmark: what crossed the wire and when.

tcpdump is not installed; as root a packet socket on `lo` sees every packet with the kernel's
timestamp (SO_TIMESTAMPNS). On loopback each packet passes twice (leaving and arriving); a
classic BPF filter in the kernel keeps only the outgoing copy and only:

  * SIP: UDP to or from the switch's SIP port -> one record per message (first line, Call-ID,
    CSeq, From and To users);
  * ESL events the switch writes to its clients (TCP from the event-socket port) -> one record per
    CHANNEL_ANSWER, with the leg's uuid and the client's port (when the event reached the
    controller's socket);
  * commands clients send to the switch (TCP to the event-socket port) -> one record per originate
    (its origination uuid and esl_cb_role) and per uuid_bridge (when the command left the client).

Run as its own process (`python benchmarks/sniff.py --sip-port P --esl-port E --out FILE`): it
writes each frame with its kernel timestamp, unparsed (to take as little CPU as it can from the machine
it measures), until SIGTERM; `Reader` parses the file into records afterwards, or as it grows. However
late the capture reads a packet, its time is the kernel's.
"""
from __future__ import annotations

import argparse
import re
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
PACKET_OUTGOING = 4
SKF_AD_PKTTYPE = 0xFFFFF000 + 4          # SKF_AD_OFF + SKF_AD_PKTTYPE

# classic BPF opcodes
LD_W_ABS, LD_H_ABS, LD_B_ABS = 0x20, 0x28, 0x30
LD_H_IND = 0x48
LDX_B_MSH = 0xB1
JEQ_K = 0x15
RET_K = 0x06


def bpf_program(sip_port: int, esl_port: int) -> list[tuple[int, int, int, int]]:
    """(code, jt, jf, k) tuples: outgoing IPv4 UDP with the SIP port on either side, or TCP with the
    ESL port on either side."""
    ACCEPT, DROP = "accept", "drop"
    prog: list = [
        (LD_W_ABS, 0, 0, SKF_AD_PKTTYPE),
        (JEQ_K, 0, DROP, PACKET_OUTGOING),
        (LD_H_ABS, 0, 0, 12),                 # ethertype (lo has a zeroed Ethernet header)
        (JEQ_K, 0, DROP, 0x0800),
        (LDX_B_MSH, 0, 0, 14),                # x = IP header length
        (LD_B_ABS, 0, 0, 23),                 # IP protocol
        (JEQ_K, "udp", 0, 17),
        (JEQ_K, "tcp", DROP, 6),
        ("udp",),
        (LD_H_IND, 0, 0, 14),                 # source port
        (JEQ_K, ACCEPT, 0, sip_port),
        (LD_H_IND, 0, 0, 16),                 # destination port
        (JEQ_K, ACCEPT, DROP, sip_port),
        ("tcp",),
        (LD_H_IND, 0, 0, 14),
        (JEQ_K, ACCEPT, 0, esl_port),
        (LD_H_IND, 0, 0, 16),
        (JEQ_K, ACCEPT, DROP, esl_port),
        ("accept",),
        (RET_K, 0, 0, 0x40000),
        ("drop",),
        (RET_K, 0, 0, 0),
    ]
    labels, out = {}, []
    for ins in prog:
        if len(ins) == 1:
            labels[ins[0]] = len(out)
        else:
            out.append(ins)
    final = []
    for i, (code, jt, jf, k) in enumerate(out):
        def rel(t):
            return labels[t] - i - 1 if isinstance(t, str) else t
        final.append((code, rel(jt), rel(jf), k))
    return final


def open_socket(sip_port: int, esl_port: int) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    prog = bpf_program(sip_port, esl_port)
    import ctypes
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in prog))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    s.bind(("lo", 0))
    # Drain what arrived between socket() and the filter: it was not filtered.
    s.setblocking(False)
    try:
        while True:
            s.recv(65536)
    except BlockingIOError:
        pass
    s.setblocking(True)
    return s


_HDR = {name: re.compile(rf"^{pat}:[ \t]*(.*?)\r?$", re.M | re.I) for name, pat in
        (("call_id", "(?:Call-ID|i)"), ("cseq", "CSeq"), ("from", "(?:From|f)"), ("to", "(?:To|t)"))}
_USER = re.compile(r"sip:([^@;>]*)@")


def sip_record(t: float, sport: int, dport: int, payload: bytes) -> dict | None:
    text = payload.decode("utf-8", "replace")
    head = text.split("\r\n\r\n", 1)[0]
    first = head.split("\r\n", 1)[0]
    if not first or first.startswith(("\x00",)):
        return None
    rec = {"t": t, "kind": "sip", "sport": sport, "dport": dport, "first": first}
    for name, rx in _HDR.items():
        m = rx.search(head)
        rec[name] = m.group(1).strip() if m else ""
    for name in ("from", "to"):
        m = _USER.search(rec[name])
        rec[name + "_user"] = m.group(1) if m else ""
    if first.startswith("INVITE ") or first.startswith("BYE "):
        m = _USER.search(first)
        rec["ruri_user"] = m.group(1) if m else ""
    return rec


_ANSWER = re.compile(rb"Event-Name: CHANNEL_ANSWER\n")
_UUID = re.compile(rb"\nUnique-ID: ([0-9a-fA-F-]{36})\n")
_ANSWERED_TIME = re.compile(rb"\nCaller-Channel-Answered-Time: (\d+)\n")


def esl_records(t: float, sport: int, dport: int, payload: bytes) -> list[dict]:
    out = []
    for m in _ANSWER.finditer(payload):
        u = _UUID.search(payload, m.end() - 1)
        a = _ANSWERED_TIME.search(payload, m.end() - 1)
        if u:
            out.append({"t": t, "kind": "esl_answer", "dport": dport, "uuid": u.group(1).decode(),
                        "answered_us": int(a.group(1)) if a else 0})
    return out


_ORIGINATE = re.compile(rb"bgapi originate \{origination_uuid=([0-9a-fA-F-]{36})[^}]*?esl_cb_role=(\w+)[^}]*\}(\S+)")
_BRIDGE = re.compile(rb"api uuid_bridge ([0-9a-fA-F-]{36}) ([0-9a-fA-F-]{36})")


def command_records(t: float, sport: int, payload: bytes) -> list[dict]:
    out = [{"t": t, "kind": "originate", "sport": sport, "uuid": m.group(1).decode(), "role": m.group(2).decode(),
            "dial": m.group(3).decode(errors="replace")} for m in _ORIGINATE.finditer(payload)]
    out += [{"t": t, "kind": "bridge", "sport": sport, "a": m.group(1).decode(), "b": m.group(2).decode()}
            for m in _BRIDGE.finditer(payload)]
    return out


def parse(frame: bytes, t: float, esl_port: int = 0) -> list[dict]:
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return []
    ihl = (frame[14] & 0x0F) * 4
    proto = frame[23]
    l4 = 14 + ihl
    sport, dport = struct.unpack("!HH", frame[l4:l4 + 4])
    if proto == 17:
        rec = sip_record(t, sport, dport, frame[l4 + 8:])
        return [rec] if rec else []
    if proto == 6:
        off = (frame[l4 + 12] >> 4) * 4
        payload = frame[l4 + off:]
        if not payload:
            return []
        if dport == esl_port:
            return command_records(t, sport, payload)
        return esl_records(t, sport, dport, payload)
    return []


RECORD = struct.Struct("<dI")          # kernel time, length; then the frame as captured
MAGIC = b"eslcb-sniff-1\n"


def capture(sip_port: int, esl_port: int, out_path: str) -> None:
    """Write each frame with its kernel timestamp, as it comes; nothing is parsed here, so the capture
    takes as little CPU as it can from the machine it measures. Flushed whenever the wire is quiet for
    50 ms, and at least once a second."""
    s = open_socket(sip_port, esl_port)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    with open(out_path, "wb", buffering=1 << 20) as out:
        out.write(MAGIC + struct.pack("<H", esl_port))
        out.flush()
        s.settimeout(0.05)
        flushed = time.monotonic()
        while not stop:
            try:
                frame, anc, _flags, _addr = s.recvmsg(262144, 64)
            except (socket.timeout, InterruptedError):
                out.flush()
                flushed = time.monotonic()
                continue
            t = 0.0
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", data[:16])
                    t = sec + nsec / 1e9
            out.write(RECORD.pack(t or time.time(), len(frame)))
            out.write(frame)
            if time.monotonic() - flushed > 1.0:
                out.flush()
                flushed = time.monotonic()


def start(sip_port: int, esl_port: int, out_path: str):
    """Start the capture as a process; returns it once its socket is open."""
    import subprocess
    proc = subprocess.Popen([sys.executable, __file__, "--sip-port", str(sip_port), "--esl-port", str(esl_port),
                             "--out", out_path])
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with open(out_path, "rb") as f:
                if len(f.read(len(MAGIC) + 2)) == len(MAGIC) + 2:
                    return proc
        except FileNotFoundError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("the packet capture did not start (it needs root: AF_PACKET)")
        time.sleep(0.05)
    raise RuntimeError("the packet capture did not start")


class Reader:
    """The capture file, parsed into records as it grows (whole frames only)."""

    def __init__(self, path: str) -> None:
        self._f = open(path, "rb")
        head = self._f.read(len(MAGIC) + 2)
        if head[:len(MAGIC)] != MAGIC:
            raise ValueError(f"{path} is not a capture of this tool")
        self.esl_port = struct.unpack("<H", head[len(MAGIC):])[0]
        self._rest = b""

    def new(self) -> list[dict]:
        data = self._rest + self._f.read()
        out, i = [], 0
        while i + RECORD.size <= len(data):
            t, n = RECORD.unpack_from(data, i)
            if i + RECORD.size + n > len(data):
                break
            out += parse(data[i + RECORD.size:i + RECORD.size + n], t, self.esl_port)
            i += RECORD.size + n
        self._rest = data[i:]
        return out

    def close(self) -> None:
        self._f.close()


def read(path: str) -> list[dict]:
    r = Reader(path)
    try:
        return r.new()
    finally:
        r.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--sip-port", type=int, required=True)
    ap.add_argument("--esl-port", type=int, required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    capture(a.sip_port, a.esl_port, a.out)
