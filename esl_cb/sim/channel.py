"""A simulated channel: its identity, variables, times and state, and the dial-string helpers of
originate. What the core database and uuid_dump read of a channel lives here; what happens to it
(events, hangups, bridges) is the switch's business."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import gevent
from gevent.event import Event as GEvent

from .coredb import CoreDB

Q850 = {
    "NORMAL_CLEARING": "16", "USER_BUSY": "17", "NO_USER_RESPONSE": "18", "NO_ANSWER": "19",
    "CALL_REJECTED": "21", "DESTINATION_OUT_OF_ORDER": "27", "NORMAL_TEMPORARY_FAILURE": "41",
    "ORIGINATOR_CANCEL": "487", "LOSE_RACE": "502", "MANAGER_REQUEST": "503",
    "CHAN_NOT_IMPLEMENTED": "66", "SUBSCRIBER_ABSENT": "20", "NORMAL_UNSPECIFIED": "31",
}
FAIL_MODES = {"busy": "USER_BUSY", "reject": "CALL_REJECTED", "fail": "NORMAL_TEMPORARY_FAILURE",
              "noanswer": "NO_ANSWER"}


class Hangup(Exception):
    """Raised into an application greenlet when its channel hangs up."""


class OriginateError(Exception):
    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


@dataclass
class EndpointBehaviour:
    mode: str = "answer"            # answer | busy | noanswer | reject | fail
    delay: float = 0.2              # seconds to answer (or to fail)
    hangup_after: float | None = None
    press: str = ""                 # keys the phone presses after answering (RFC 2833)...
    press_after: float = 0.0        # ...this many seconds after the answer
    talk: float | None = None       # hangs up this long after being bridged (the end of a conversation)


@dataclass
class Channel:
    uuid: str
    direction: str                  # 'outbound' (originated) or 'inbound' (caller)
    channel_name: str
    cid_num: str
    cid_name: str
    dest: str
    originate_vars: list[tuple[str, str]] = field(default_factory=list)
    vars: dict[str, str] = field(default_factory=dict)
    times: dict[str, int] = field(default_factory=dict)
    state: str = "new"              # new, ringing, answered, parked, executing, bridged, hungup
    peer: "Channel | None" = None
    app: str = ""
    app_data: str = ""
    app_uuid: str = ""
    app_greenlet: gevent.Greenlet | None = None
    hangup_cause: str = ""
    dtmf: list[str] = field(default_factory=list)
    dtmf_event: GEvent = field(default_factory=GEvent)
    answered_event: GEvent = field(default_factory=GEvent)
    hungup_event: GEvent = field(default_factory=GEvent)
    session: object | None = None   # the outbound socket session controlling this call
    last_app: str = ""
    last_arg: str = ""
    media_started_at: float = 0.0
    job: object | None = None
    db: CoreDB | None = None        # the core database this channel's changes are written to
    db_log: list = field(default_factory=list)
    dump_template: list | None = None   # the last channel event with variables: what uuid_dump renders
    digits_dialed: str = ""          # every key the caller pressed (variable_digits_dialed at hangup)
    bridge_a: bool = False          # the first leg of a uuid_bridge (the core db lists the call under it)
    reading: bool = False           # play_and_get_digits waits for keys (its prompt is over)
    break_pending: bool = False     # a uuid_break during that wait, held for the next sound

    def set_state(self, state: str) -> None:
        self.state = state
        if self.db is not None:
            self.db.write(self)

    def set_var(self, name: str, value: str | None) -> None:
        """FreeSWITCH deletes then appends: a re-set variable moves to the end."""
        self.vars.pop(name, None)
        if value:
            self.vars[name] = value

    def start_app(self, app: str, data: str, app_uuid: str) -> None:
        """What executing an application does to the variables, as the captures show:
        current_application is replaced where it stands, the data is appended."""
        self.app, self.app_data, self.app_uuid = app, data, app_uuid
        self.last_app, self.last_arg = app, data
        if "current_application" in self.vars:
            self.vars["current_application"] = app
        else:
            self.vars["current_application"] = app
        if data:
            self.set_var("current_application_data", data)
        else:
            self.vars.pop("current_application_data", None)
        self.vars.pop("current_application_response", None)
        if self.db is not None:
            self.db.write(self)

    def finish_playback(self, seconds: float, respond: bool = True) -> None:
        """The variables playback leaves on the channel when it ends."""
        samples = int(seconds * 8000)
        self.set_var("playback_last_offset_pos", str(samples))
        self.set_var("playback_seconds", str(int(seconds)))
        self.set_var("playback_ms", str(int(seconds * 1000)))
        self.set_var("playback_samples", str(samples))
        if respond:
            self.set_var("current_application_response", "FILE PLAYED")

    def end_application_for_bridge(self) -> None:
        """uuid_bridge stops what the channel runs. A menu waiting for keys ends with read_result
        failure (FreeSWITCH, measured); one still playing its prompt ends with no read_result."""
        if self.app_greenlet is not None and not self.app_greenlet.dead:
            if self.reading:
                self.set_var("read_result", "failure")
            self.app_greenlet.kill(block=False)

    def media_started(self) -> None:
        """Media applications re-set current_application when they start (it moves to the end)."""
        self.media_started_at = time.time()
        self.set_var("current_application", self.vars.get("current_application", self.app))

    @property
    def alive(self) -> bool:
        return self.state != "hungup"

    def tokens(self, prefix: str = "") -> dict[str, str]:
        t = self.times
        now = t.get("hangup") or int(time.time() * 1_000_000)
        out = {
            "uuid": self.uuid, "channel_name": self.channel_name, "cid_num": self.cid_num,
            "cid_name": self.cid_name, "dest": self.dest,
            "dest_host": self.channel_name.split("@", 1)[1] if "@" in self.channel_name else "127.0.0.1:5060",
        }
        out["dest_port"] = out["dest_host"].rsplit(":", 1)[1] if ":" in out["dest_host"] else "5060"
        for key in ("created", "answered", "progress", "progress_media", "hangup", "bridged"):
            us = t.get(key, 0)
            out["time_" + key] = str(us)
            out[f"vtime_{key}_uepoch"] = str(us)
            out[f"vtime_{key}_epoch"] = str(us // 1_000_000)
            out[f"vtime_{key}_stamp"] = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(us // 1_000_000))
                                         if us else "")
        created = t.get("created", now)
        answered = t.get("answered", 0)
        progress = t.get("progress", 0)
        dur_us = max(now - created, 0)
        bill_us = max(now - answered, 0) if answered else 0
        prog_us = max(progress - created, 0) if progress else 0
        ans_us = max(answered - created, 0) if answered else 0
        for unit, div, suf in (("sec", 1_000_000, ""), ("msec", 1000, "m"), ("usec", 1, "u")):
            out["dur_" + ("duration" if unit == "sec" else suf + "duration")] = str(dur_us // div)
            out["dur_bill" + unit] = str(bill_us // div)
            out["dur_flow_bill" + unit] = str(bill_us // div)
            out["dur_progress" + unit] = str(prog_us // div)
            out["dur_answer" + unit] = str(ans_us // div)
            out["dur_wait" + unit] = str(ans_us // div)
            out["dur_progress_media" + unit] = "0"
        out.update(app=self.app, app_data=self.app_data, app_uuid=self.app_uuid,
                   app_response=self.vars.get("current_application_response", "_none_"),
                   last_app=self.last_app, last_arg=self.last_arg,
                   hangup_cause=self.hangup_cause or "NORMAL_CLEARING",
                   q850=Q850.get(self.hangup_cause or "NORMAL_CLEARING", "16"))
        if prefix:
            return {prefix + k: v for k, v in out.items()}
        return out


def parse_dial_string(text: str) -> tuple[list[tuple[str, str]], str]:
    """Split '{a=b,c=d}sofia/...' into ([(a, b), (c, d)], 'sofia/...').

    Values may hold escaped commas ('\\,') and quoted text, as in FreeSWITCH.
    """
    variables: list[tuple[str, str]] = []
    rest = text
    while rest[:1] in ("{", "[", "<"):
        close = {"{": "}", "[": "]", "<": ">"}[rest[0]]
        end = rest.find(close)
        if end < 0:
            break
        inner, rest = rest[1:end], rest[end + 1:]
        for item in re.split(r"(?<!\\),", inner):
            if not item:
                continue
            k, _, v = item.partition("=")
            variables.append((k.strip(), v.replace("\\,", ",").strip("'\"")))
    return variables, rest


def split_args(text: str) -> list[str]:
    """Split on spaces outside {...}, [...] and quotes, like FreeSWITCH's originate does."""
    out, cur, depth, quote = [], [], 0, ""
    for ch in text.strip():
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth = max(depth - 1, 0)
        elif ch == " " and depth == 0:
            if cur:
                out.append("".join(cur))
                cur = []
            continue
        cur.append(ch)
    if cur:
        out.append("".join(cur))
    return out


def endpoint_user(dial: str) -> str:
    """The number an endpoint is keyed by: the user part of whatever is dialled."""
    target = dial.split(",")[0].split("|")[0]
    parts = target.split("/")
    last = parts[-1] if parts else target
    return last.split("@")[0]


def deliver_dtmf(switch, ch: Channel, digit: str) -> None:
    """A digit from a phone (RFC 2833): the DTMF event, then any collector on the channel sees it."""
    if not ch.alive:
        return
    switch.emit_channel_event(switch._steps["in.dtmf"][0][1], ch, overrides={"DTMF-Digit": digit})
    ch.dtmf.append(digit)
    ch.digits_dialed += digit
    ch.dtmf_event.set()
