"""SIPp as the people around the switch: callers (tests/freeswitch/sipp/caller.xml) and the phones of
agents and customers (phones.xml, one process for all; the last character of the called user
picks the behaviour)."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .switch import free_port

HERE = Path(__file__).resolve().parent / "sipp"
PCAP_DIR = Path("/usr/share/sip-tester")

# phones.xml behaviours, by the last character of the called number or user
ANSWER, BUSY, NO_ANSWER, REJECT, SLOW_ANSWER, HANGS_UP_SOON, HANGS_UP_LATER, PRESSES_ONE = "12345678"


@dataclass(frozen=True)
class SipMessage:
    at: float                  # SIPp's wall clock, epoch seconds
    sent: bool                 # by the phone (True) or by the switch (False)
    first_line: str
    call_id: str
    text: str


_ENTRY = re.compile(r"^-{20,} (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\n(UDP message (sent|received)[^\n]*)\n\n",
                    re.M)


def read_messages(log: Path) -> list[SipMessage]:
    """SIPp's -trace_msg log: every SIP message with the time it crossed the wire."""
    text = log.read_text(errors="replace")
    out = []
    marks = list(_ENTRY.finditer(text))
    for m, nxt in zip(marks, marks[1:] + [None]):
        body = text[m.end(): nxt.start() if nxt else len(text)].strip("\n")
        call_id = re.search(r"^Call-ID:\s*(\S+)", body, re.M | re.I)
        out.append(SipMessage(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp(),
                              m.group(3) == "sent", body.split("\n", 1)[0].strip(),
                              call_id.group(1) if call_id else "", body))
    return out


class Phones:
    """One SIPp UAS that answers (or not) every agent's and customer's call."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.media_port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["sipp", "-sf", str(HERE / "phones.xml"), "-i", "127.0.0.1", "-p", str(self.port), "-mi", "127.0.0.1",
             "-mp", str(self.media_port), "-nostdin", "-trace_err", "-trace_msg", "-max_recv_loops", "100000"],
            cwd=root, stdout=(root / "phones.out").open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def dial(self, user: str) -> str:
        return f"sofia/test/{user}@127.0.0.1:{self.port}"

    def dial_template(self) -> str:
        return f"sofia/test/{{digits}}@127.0.0.1:{self.port}"

    def messages(self) -> list[SipMessage]:
        out: list[SipMessage] = []
        for log in self.root.glob("phones_*_messages.log"):
            out += read_messages(log)
        return sorted(out, key=lambda m: m.at)

    def invites_to(self, user: str) -> list[SipMessage]:
        """The INVITEs that reached `user` (a number's digits or an agent's name), oldest first."""
        return [m for m in self.messages() if not m.sent and m.first_line.startswith(f"INVITE sip:{user}@")]

    def answered(self, invite: SipMessage) -> float | None:
        """When the phone answered that INVITE (its 200 OK left), or None."""
        for m in self.messages():
            if m.sent and m.call_id == invite.call_id and m.first_line.startswith("SIP/2.0 200") and \
                    "INVITE" in (re.search(r"^CSeq:.*$", m.text, re.M) or [""])[0]:
                return m.at
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _pcap(key: str) -> Path:
    return PCAP_DIR / f"dtmf_2833_{ {'*': 'star', '#': 'pound'}.get(key, key) }.pcap"


class Caller:
    """One caller: calls `did` from `ani`; presses `key` `key_after` seconds after the answer (None:
    never; several keys: `key_gap` apart, and never the same key twice in a row: each key's pcap
    carries the same RTP timestamp, and the switch drops the second as a repeat); hangs up `hangup_after` seconds after that (None: waits for the switch to hang up)."""

    def __init__(self, root: Path, sip_port: int, ani: str, did: str, key: str | None = "1",
                 key_after: float = 1.0, hangup_after: float | None = None, name: str = "caller",
                 key_gap: float = 0.5) -> None:
        text = (HERE / "caller.xml").read_text()
        if key is None:
            text = re.sub(r"  <nop>\s*<action>\s*<exec play_pcap_audio=.*?</nop>\n", "", text, flags=re.S)
        elif len(key) > 1:                 # several keys (an agent's number and PIN): one pcap each, key_gap apart
            one = re.search(r"  <nop>\s*<action>\s*<exec play_pcap_audio=.*?</nop>\n", text, flags=re.S).group(0)
            keys = "".join((f'  <pause milliseconds="{int(key_gap * 1000)}"/>\n' if i else "")
                           + one.replace("@KEY_PCAP@", str(_pcap(k))) for i, k in enumerate(key))
            text = text.replace(one, keys)
        pcap = _pcap(key) if key and len(key) == 1 else ""
        text = (text.replace("@FROM@", ani).replace("@KEY_AFTER_MS@", str(int(key_after * 1000)))
                .replace("@KEY_PCAP@", str(pcap)).replace("@HANGS_UP@", "0" if hangup_after is None else "1")
                .replace("@HANGUP_AFTER_MS@", str(int((hangup_after or 0) * 1000))))
        root.mkdir(parents=True, exist_ok=True)
        scenario = root / f"{name}.xml"
        scenario.write_text(text)
        self.root = root
        self.proc = subprocess.Popen(
            ["sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(free_port()), "-mi", "127.0.0.1",
             "-mp", str(free_port()), "-s", did, f"127.0.0.1:{sip_port}", "-m", "1", "-nostdin", "-trace_err",
             "-trace_msg"],
            cwd=root, stdout=(root / f"{name}.out").open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def register_phone(root: Path, sip_port: int, user: str, contact_port: int, expires: int = 3600,
                   call_id: str | None = None, cseq: int = 1) -> str:
    """`user`'s phone REGISTERs at the switch on `sip_port` (Contact: the test phones' port); `expires`
    0 un-registers the binding of `call_id`. Returns the Call-ID (keep it to un-register)."""
    call_id = call_id or f"reg-{user}-{free_port(udp_too=False)}"
    root.mkdir(parents=True, exist_ok=True)
    scenario = root / f"register-{user}-{cseq}.xml"
    scenario.write_text((HERE / "phone_register.xml").read_text().replace("@CONTACT_PORT@", str(contact_port))
                        .replace("@EXPIRES@", str(expires)).replace("@CSEQ@", str(cseq)))
    done = subprocess.run(
        ["sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(free_port()), "-s", user,
         f"127.0.0.1:{sip_port}", "-m", "1", "-cid_str", call_id, "-nostdin", "-timeout", "10",
         "-timeout_error"],     # -cid_str: SIPp matches the answer by its Call-ID, the one we choose
        cwd=root, capture_output=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"{user} could not register at the switch (sipp exit {done.returncode}): "
                           f"{done.stdout[-400:]!r}")
    return call_id
