#!/usr/bin/env python3
"""Build esl_cb/sim/profile.json from the FreeSWITCH wire captures.

The simulator renders every channel event from a template taken from a real
FreeSWITCH 1.10 recording, so header names, their order and the values we do
not model come out exactly as the switch sends them. Per-call values (uuids,
numbers, channel names, times, durations, application fields) become
${tokens} that the simulator fills in.

Usage: python tools/build_sim_profile.py [CAPTURES_DIR]
(default ../shared/esl-captures relative to the repository).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from urllib.parse import unquote

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "esl_cb" / "sim" / "profile.json"
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

TIME_SUFFIX = {
    "Profile-Created-Time": "created",
    "Channel-Created-Time": "created",
    "Channel-Answered-Time": "answered",
    "Channel-Progress-Time": "progress",
    "Channel-Progress-Media-Time": "progress_media",
    "Channel-Hangup-Time": "hangup",
    "Channel-Bridged-Time": "bridged",
}
VAR_TIME_PREFIX = {
    "start": "created",
    "profile_start": "created",
    "answer": "answered",
    "progress": "progress",
    "progress_media": "progress_media",
    "end": "hangup",
    "bridge": "bridged",
}
DURATION_VARS = {
    "duration", "billsec", "progresssec", "answersec", "waitsec", "progress_mediasec", "flow_billsec",
    "mduration", "billmsec", "progressmsec", "answermsec", "waitmsec", "progress_mediamsec", "flow_billmsec",
    "uduration", "billusec", "progressusec", "answerusec", "waitusec", "progress_mediausec", "flow_billusec",
}
APP_HEADERS = {
    "Application": "${app}",
    "Application-Data": "${app_data}",
    "Application-UUID": "${app_uuid}",
    "Application-Response": "${app_response}",
    "variable_current_application": "${app}",
    "variable_current_application_data": "${app_data}",
    "variable_current_application_response": "${app_response}",
}
HANGUP_HEADERS = {
    "Hangup-Cause": "${hangup_cause}",
    "variable_hangup_cause": "${hangup_cause}",
    "variable_hangup_cause_q850": "${q850}",
}
# Variables applications set while the call runs; the simulator keeps them per channel in
# FreeSWITCH's order (insertion order, a re-set moves to the end) and renders them at the marker.
RUNTIME_VARS = {"current_application", "current_application_data", "current_application_response",
                "playback_last_offset_pos", "playback_seconds", "playback_ms", "playback_samples",
                "read_result", "cb_digit", "socket_host", "cb_a", "cb_b"}
COMMON = {"Core-UUID", "FreeSWITCH-Hostname", "FreeSWITCH-Switchname", "FreeSWITCH-IPv4", "FreeSWITCH-IPv6",
          "Event-Date-Local", "Event-Date-GMT", "Event-Date-Timestamp", "Event-Sequence"}


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open()]


def plain_events(records: list[dict], conn: str) -> list[list[tuple[str, str]]]:
    """Decoded header lists of the text/event-plain frames FreeSWITCH sent on conn."""
    out = []
    for r in records:
        if r.get("dir") != "in" or r.get("conn") != conn:
            continue
        head, _, body = r["raw"].partition("\n\n")
        if "Content-Type: text/event-plain" not in head:
            continue
        block = body.split("\n\n", 1)[0]
        hs = []
        for line in block.split("\n"):
            k, _, v = line.partition(": ")
            hs.append((k, unquote(v)))
        out.append(hs)
    return out


def originate_var_names(records: list[dict]) -> list[list[str]]:
    names = []
    for r in records:
        if r.get("dir") == "out" and "originate {" in r["raw"]:
            inner = r["raw"].split("{", 1)[1].split("}", 1)[0]
            names.append([kv.split("=", 1)[0] for kv in inner.split(",")])
    return names


def hget(hs, name, default=""):
    for k, v in hs:
        if k == name:
            return v
    return default


class Leg:
    """Literal per-call values of one recorded leg, and the tokens that replace them."""

    def __init__(self, uuid: str, channel_name: str, cid_num: str, cid_name: str, dest: str):
        self.uuid = uuid
        host = channel_name.split("@", 1)[1] if "@" in channel_name else ""
        port = host.rsplit(":", 1)[1] if ":" in host else ""
        self.literals = [(channel_name, "channel_name"), (host, "dest_host"), (port, "dest_port"), (cid_name, "cid_name"),
                         (cid_num, "cid_num"), (dest, "dest")]


LITERAL_APPS = {"socket", "uuid_bridge"}


def tokenize(name: str, value: str, me: Leg, other: Leg | None, orig_vars: set[str], app: str = "") -> str:
    prefix = ""
    if name.startswith("Other-Leg-"):
        me, other, prefix = other or me, me, "o_"
    for suffix, key in TIME_SUFFIX.items():
        if name.endswith(suffix) and value != "0":
            return "${%stime_%s}" % (prefix, key)
    if name.startswith("variable_"):
        var = name[9:]
        m = re.match(r"(.+)_(stamp|epoch|uepoch)$", var)
        if m and m.group(1) in VAR_TIME_PREFIX and value not in ("0", ""):
            return "${vtime_%s_%s}" % (VAR_TIME_PREFIX[m.group(1)], m.group(2))
        if var == "sip_invite_stamp":
            return "${vtime_created_uepoch}"
        if var in DURATION_VARS:
            return "${dur_%s}" % var
        if var in orig_vars:
            return value
    if name in APP_HEADERS and not (app in LITERAL_APPS and not name.startswith("variable_")):
        return APP_HEADERS[name]
    if name in HANGUP_HEADERS:
        return HANGUP_HEADERS[name]
    if name in ("Playback-File-Path", "execute-app-arg"):
        return "${app_data}"
    if name == "DTMF-Digit":
        return "${digit}"
    if name == "Controlled-Session-UUID":
        return "${uuid}"

    def sub_uuid(m):
        u = m.group(0)
        if u == me.uuid:
            return "${%suuid}" % prefix
        if other is not None and u == other.uuid:
            return "${%suuid}" % ("" if prefix else "o_")
        return u
    value = UUID_RE.sub(sub_uuid, value)
    for legs, pfx in ((me, prefix), (other, "" if prefix else "o_")):
        if legs is None:
            continue
        for lit, tok in legs.literals:
            if not lit:
                continue
            if tok in ("dest", "cid_num", "dest_port"):
                value = re.sub(r"(?<![\w.])%s(?![\w])" % re.escape(lit), "${%s%s}" % (pfx, tok), value)
            else:
                value = value.replace(lit, "${%s%s}" % (pfx, tok))
    return value


def template(hs, me: Leg, other: Leg | None = None, orig_vars: list[str] | None = None,
             runtime_in_place: bool = False):
    """Header list -> [[name, tokenized value], ...]; the originate {vars} become one marker."""
    orig = set(orig_vars or [])
    app = hget(hs, "Application")
    out = []
    marker_done = False
    runtime_done = False
    for k, v in hs:
        if k in COMMON:
            out.append([k, ""])
            continue
        if k.startswith("variable_") and k[9:] in RUNTIME_VARS and runtime_in_place:
            # The caller's leg: keep where the recording had it, filled from the channel.
            out.append([k, "${var_%s}" % k[9:]])
            continue
        if k.startswith("variable_") and k[9:] in RUNTIME_VARS:
            if not runtime_done:
                out.append(["@runtime_vars", ""])
                runtime_done = True
            continue
        if k.startswith("variable_") and k[9:] in orig:
            if not marker_done:
                out.append(["@originate_vars", ""])
                marker_done = True
            continue
        if k == "variable_last_app":
            out.append([k, "${last_app}"])
            if not any(n == "variable_last_arg" for n, _ in hs):
                out.append(["@last_arg", ""])
            continue
        if k == "variable_last_arg":
            out.append([k, "${last_arg}"])
            continue
        out.append([k, tokenize(k, v, me, other, orig, app)])
    return out


def leg_for(events, uuid):
    for hs in events:
        if hget(hs, "Unique-ID") == uuid and hget(hs, "Caller-Caller-ID-Number"):
            direction = hget(hs, "Call-Direction")
            if direction == "outbound":
                return Leg(uuid, hget(hs, "Channel-Name"), hget(hs, "Caller-Orig-Caller-ID-Number"),
                           hget(hs, "Caller-Orig-Caller-ID-Name"), hget(hs, "Caller-Destination-Number"))
            return Leg(uuid, hget(hs, "Channel-Name"), hget(hs, "Caller-Caller-ID-Number"),
                       hget(hs, "Caller-Caller-ID-Name"), hget(hs, "Caller-Destination-Number"))
    raise KeyError(uuid)


def channel_events(events, uuid):
    return [hs for hs in events if hget(hs, "Unique-ID") == uuid]


def split(evs, starts):
    """Cut a channel's events into named steps; each start predicate opens the next step."""
    steps, cur, name = {}, None, None
    queue = list(starts)
    for hs in evs:
        if queue and queue[0][1](hs):
            name = queue.pop(0)[0]
            cur = steps.setdefault(name, [])
        if cur is None:
            raise ValueError("events before the first step: %s" % hget(hs, "Event-Name"))
        cur.append(hs)
    return steps


def is_ev(name, **kw):
    def pred(hs):
        if hget(hs, "Event-Name") != name:
            return False
        return all(hget(hs, k.replace("_", "-")) == v for k, v in kw.items())
    return pred


def main(captures: Path) -> None:
    profile: dict = {"steps": {}, "events": {}, "source": "FreeSWITCH 1.10 wire captures"}
    steps = profile["steps"]

    # -- 03: originated leg answered, parked, killed.
    rec = load(captures / "03-originate-park-kill.jsonl")
    evs = plain_events(rec, "A")
    ovars = originate_var_names(rec)[0]
    uuid = hget(evs[0], "Unique-ID")
    leg = leg_for(evs, uuid)
    parts = split(channel_events(evs, uuid), [
        ("out.create", is_ev("CHANNEL_OUTGOING")),
        ("out.progress", is_ev("CHANNEL_PROGRESS")),
        ("out.answer", is_ev("CODEC")),
        ("out.park", is_ev("CHANNEL_STATE", Channel_State="CS_EXECUTE")),
        ("out.hangup_parked", is_ev("CHANNEL_HANGUP")),
    ])
    for name, hss in parts.items():
        steps[name] = [["a", template(hs, leg, None, ovars)] for hs in hss]
    for hs in evs:
        en = hget(hs, "Event-Name")
        if en in ("API", "BACKGROUND_JOB") and en not in profile["events"]:
            profile["events"][en] = template(hs, leg)

    # -- 04: failed originates, one per cause.
    rec = load(captures / "04-originate-failures.jsonl")
    evs = plain_events(rec, "A")
    all_ovars = originate_var_names(rec)
    uuids = []
    for hs in evs:
        u = hget(hs, "Unique-ID")
        if u and u not in uuids:
            uuids.append(u)
    for i, u in enumerate(uuids):
        cevs = channel_events(evs, u)
        leg = leg_for(cevs, u)
        cause = next(hget(hs, "Hangup-Cause") for hs in cevs if hget(hs, "Event-Name") == "CHANNEL_HANGUP")
        parts = split(cevs, [
            ("create", is_ev("CHANNEL_OUTGOING")),
            ("fail", is_ev("CHANNEL_HANGUP")),
        ]) if not any(hget(h, "Event-Name") == "CHANNEL_PROGRESS" for h in cevs) else split(cevs, [
            ("create", is_ev("CHANNEL_OUTGOING")),
            ("progress", is_ev("CHANNEL_PROGRESS")),
            ("fail", is_ev("CHANNEL_HANGUP")),
        ])
        steps["out.fail." + cause] = [["a", template(hs, leg, None, all_ovars[i])] for hs in parts["fail"]]

    # -- 05: two parked legs bridged with uuid_bridge, then A killed.
    rec = load(captures / "05-uuid-bridge.jsonl")
    evs = plain_events(rec, "A")
    all_ovars = originate_var_names(rec)
    seen = []
    for hs in evs:
        u = hget(hs, "Unique-ID")
        if u and u not in seen:
            seen.append(u)
    ua, ub = seen[0], seen[1]
    la, lb = leg_for(evs, ua), leg_for(evs, ub)
    ovars = sorted(set(all_ovars[0]) | set(all_ovars[1]))

    def role_template(hs):
        u = hget(hs, "Unique-ID")
        if u == ua:
            return ["a", template(hs, la, lb, ovars)]
        return ["b", template(hs, lb, la, ovars)]
    start = next(i for i, hs in enumerate(evs) if hget(hs, "Event-Name") == "CHANNEL_UNPARK")
    kill = next(i for i, hs in enumerate(evs) if hget(hs, "Event-Name") == "CHANNEL_HANGUP")
    steps["bridge.bridge"] = [role_template(hs) for hs in evs[start:kill] if hget(hs, "Unique-ID") in (ua, ub)]
    steps["bridge.hangup"] = [role_template(hs) for hs in evs[kill:] if hget(hs, "Unique-ID") in (ua, ub)]

    # -- 06: uuid_broadcast of a playback onto a parked originated leg.
    rec = load(captures / "06-api-uuid-commands.jsonl")
    evs = plain_events(rec, "A")
    ovars = originate_var_names(rec)[0]
    first = next(i for i, hs in enumerate(evs)
                 if hget(hs, "Event-Name") == "CHANNEL_EXECUTE" and hget(hs, "Application") == "playback")
    uuid = hget(evs[first], "Unique-ID")
    leg = leg_for(evs, uuid)
    last = next(i for i, hs in enumerate(evs) if hget(hs, "Event-Name") == "COMMAND")
    steps["out.broadcast"] = [["a", template(hs, leg, None, ovars)] for hs in evs[first:last + 1]
                              if hget(hs, "Unique-ID") == uuid or hget(hs, "Event-Name") == "COMMAND"]

    # A dial string sofia rejects (unknown profile, no user) still creates and destroys a bare session.
    born = next(hs for hs in evs if hget(hs, "Event-Name") == "CHANNEL_DESTROY" and hget(hs, "Channel-Name") == "N/A")
    uuid = hget(born, "Unique-ID")
    bare = Leg(uuid, "N/A", "", "", "")
    steps["out.stillborn"] = [["a", template(hs, bare)] for hs in evs if hget(hs, "Unique-ID") == uuid]

    # -- 07: outbound socket: connect reply, answer, playback, play_and_get_digits, hangup.
    rec = load(captures / "07-outbound-dtmf.jsonl")
    connect = next(r["raw"] for r in rec if r.get("dir") == "in" and r["raw"].startswith("Event-Name: CHANNEL_DATA"))
    chs = [(k, unquote(v)) for k, _, v in (line.partition(": ") for line in connect.split("\n\n")[0].split("\n"))]
    uuid = hget(chs, "Unique-ID")
    ileg = Leg(uuid, hget(chs, "Channel-Name"), hget(chs, "Caller-Caller-ID-Number"),
               hget(chs, "Caller-Caller-ID-Name"), hget(chs, "Caller-Destination-Number"))
    profile["connect"] = [h for h in template(chs, ileg, runtime_in_place=True)
                          if h[0] not in ("Content-Type", "Reply-Text", "Socket-Mode", "Control")]
    evs = plain_events(rec, "OUT")
    parts = split(evs, [
        ("in.exec_answer", is_ev("CHANNEL_EXECUTE", Application="answer")),
        ("in.exec_playback", is_ev("CHANNEL_EXECUTE", Application="playback")),
        ("in.done_playback", is_ev("CHANNEL_EXECUTE_COMPLETE", Application="playback")),
        ("in.exec_pagd", is_ev("CHANNEL_EXECUTE", Application="play_and_get_digits")),
        ("in.dtmf", is_ev("DTMF")),
        ("in.done_pagd", is_ev("CHANNEL_EXECUTE_COMPLETE", Application="play_and_get_digits")),
        ("in.exec_hangup", is_ev("CHANNEL_EXECUTE", Application="hangup")),
    ])
    for name, hss in parts.items():
        steps[name] = [["a", template(hs, ileg, runtime_in_place=True)] for hs in hss]

    # -- 08: caller hangs up during playback.
    rec = load(captures / "08-outbound-caller-hangup.jsonl")
    evs = plain_events(rec, "OUT")
    connect = next(r["raw"] for r in rec if r.get("dir") == "in" and r["raw"].startswith("Event-Name: CHANNEL_DATA"))
    chs = [(k, unquote(v)) for k, _, v in (line.partition(": ") for line in connect.split("\n\n")[0].split("\n"))]
    ileg = Leg(hget(chs, "Unique-ID"), hget(chs, "Channel-Name"), hget(chs, "Caller-Caller-ID-Number"),
               hget(chs, "Caller-Caller-ID-Name"), hget(chs, "Caller-Destination-Number"))
    parts = split(evs, [
        ("x", is_ev("CHANNEL_EXECUTE")),
        ("in.caller_hangup", is_ev("CHANNEL_HANGUP")),
    ])
    steps["in.caller_hangup"] = [["a", template(hs, ileg, runtime_in_place=True)]
                                 for hs in parts["in.caller_hangup"]]

    # -- 09: an inbound SIP call as seen by an 'event plain ALL' listener, up to the answer.
    rec = load(captures / "09-callcenter.jsonl")
    evs = plain_events(rec, "A")
    first = next(hs for hs in evs if hget(hs, "Event-Name") == "CHANNEL_CREATE" and hget(hs, "Call-Direction") == "inbound")
    uuid = hget(first, "Unique-ID")
    cevs = channel_events(evs, uuid)
    cleg = leg_for(cevs, uuid)
    end = next(i for i, hs in enumerate(cevs)
               if hget(hs, "Event-Name") == "CHANNEL_EXECUTE_COMPLETE" and hget(hs, "Application") == "answer")
    steps["in.arrive"] = [["a", template(hs, cleg, runtime_in_place=True)] for hs in cevs[: end + 1]
                          if hget(hs, "Event-Name") not in ("CUSTOM", "PRESENCE_IN", "PLAYBACK_START")]

    # -- 02 and 07: heartbeat, re_schedule and DTMF shapes.
    rec = load(captures / "02-event-formats.jsonl")
    evs = plain_events(rec, "A")
    for hs in evs:
        en = hget(hs, "Event-Name")
        if en in ("HEARTBEAT", "RE_SCHEDULE") and en not in profile["events"]:
            profile["events"][en] = [[k, "" if k in COMMON else v] for k, v in hs]

    OUT.write_text(json.dumps(profile, indent=0, sort_keys=True) + "\n")
    n = sum(len(v) for v in steps.values())
    print(f"wrote {OUT.relative_to(REPO)}: {len(steps)} steps, {n} event templates")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "esl-captures")
