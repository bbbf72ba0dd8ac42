"""API commands ('api X' / 'bgapi X') of the simulated switch, with FreeSWITCH's replies."""
from __future__ import annotations

import json
import time
import uuid as uuidlib
from typing import TYPE_CHECKING

import gevent

from . import control, phones
from .apps import queue_app
from .channel import OriginateError
from .config import local_stream as local_stream_show
from .events import Event, render

if TYPE_CHECKING:
    from .switch import Switch

ORIGINATE_USAGE = ("-USAGE: <call url> <exten>|&<application_name>(<app_args>) [<dialplan>] [<context>] "
                   "[<cid_name>] [<cid_num>] [<timeout_sec>]\n")
NO_CHANNEL = "-ERR No such channel!\n"


def execute(switch: "Switch", cmd: str, arg: str, conn=None) -> str:
    """Run one API command to completion and return its body."""
    handler = COMMANDS.get(cmd)
    if handler is None:
        body = f"-ERR {cmd} Command not found!\n"
    else:
        body = handler(switch, arg)
    if cmd:
        switch.emit_api(cmd, arg)
    return body


def background(switch: "Switch", cmd: str, arg: str, job_uuid: str, received_at: float | None = None) -> None:
    """bgapi: run the command, then announce its result as BACKGROUND_JOB."""
    if cmd == "originate":
        try:
            ch = switch.originate(arg, received_at)
        except OriginateError as e:
            switch.emit_api(cmd, arg)
            result = ORIGINATE_USAGE if e.cause == "USAGE" else f"-ERR {e.cause}\n"
            switch.emit_background_job(job_uuid, cmd, arg, result)
            return

        def job(result: str) -> None:
            switch.emit_api(cmd, arg)
            switch.emit_background_job(job_uuid, cmd, arg, result)
        ch.job = job
        return
    handler = COMMANDS.get(cmd)
    result = handler(switch, arg) if handler else f"-ERR {cmd} Command not found!\n"
    switch.emit_api(cmd, arg)
    switch.emit_background_job(job_uuid, cmd, arg, result)


# FreeSWITCH's sessions-per-second when switch.conf does not set one; the simulator's 0 (no limit)
# reads as this default, as a stock switch would answer.
DEFAULT_SPS = 30


def sps(switch: "Switch") -> int:
    return switch.sessions_per_second or DEFAULT_SPS


def status(switch: "Switch", arg: str) -> str:
    """The text of FreeSWITCH 1.11's status (each unit singular when 1, as FreeSWITCH writes it)."""
    up = max(switch.clock() - switch.started, 0.0)
    secs = int(up)
    units = ((secs // 31536000, "year"), (secs // 86400 % 365, "day"), (secs // 3600 % 24, "hour"),
             (secs // 60 % 60, "minute"), (secs % 60, "second"), (int(up * 1000) % 1000, "millisecond"),
             (int(up * 1_000_000) % 1000, "microsecond"))
    uptime = ", ".join(f"{n} {unit}{'' if n == 1 else 's'}" for n, unit in units)
    second = int(switch.clock())
    last = switch.sps_last if switch._second[0] == second else (
        switch._second[1] if switch._second[0] == second - 1 else 0)
    return (f"UP {uptime}\n"
            f"FreeSWITCH (Version {switch.identity.version.split('~')[0]}  64bit) is ready\n"
            f"{switch.sessions_since_startup} session(s) since startup\n"
            f"{len(switch.channels)} session(s) - peak {switch.peak}, last 5min {switch.peak} \n"
            f"{last} session(s) per Sec out of max {sps(switch)}, peak {switch.sps_peak}, "
            f"last 5min {switch.sps_peak} \n"
            f"{switch.max_sessions} session(s) max\n"
            f"min idle cpu 0.00/100.00\n"
            f"Current Stack Size/Max 240K/8192K\n")


FSCTL_USAGE = ("-USAGE: [api_expansion [on|off]|recover|send_sighup|hupall|pause [inbound|outbound]|resume "
               "[inbound|outbound]|shutdown [cancel|elegant|asap|now|restart]|uuid_version [4|7]|sps|sps_peak_reset|"
               "sync_clock|sync_clock_when_idle|reclaim_mem|max_sessions|min_dtmf_duration [num]|max_dtmf_duration "
               "[num]|default_dtmf_duration [num]|min_idle_cpu|loglevel [level]|debug_level [level]|mdns_resolve "
               "[enable|disable]]\n")


def fsctl(switch: "Switch", arg: str) -> str:
    """fsctl max_sessions [N] / fsctl sps [N]: a new value only when above 0, as in FreeSWITCH."""
    words = arg.split()
    value = int(words[1]) if len(words) > 1 and words[1].isdigit() else 0
    if words[:1] == ["max_sessions"]:
        if value:
            switch.max_sessions = value
        return f"+OK max sessions: {switch.max_sessions}\n"
    if words[:1] == ["sps"]:
        if value:
            switch.sessions_per_second = value
        return f"+OK sessions per second: {sps(switch)}\n"
    return FSCTL_USAGE


def global_getvar(switch: "Switch", arg: str) -> str:
    values = switch.config.globals(switch.sounds)
    name = arg.strip()
    if not name:
        return "".join(f"{k}={v}\n" for k, v in values.items())
    return values.get(name) or "-ERR no reply\n"


def user_exists(switch: "Switch", arg: str) -> str:
    return switch.config.user_exists(arg)


def sofia(switch: "Switch", arg: str) -> str:
    return switch.config.sofia(arg)


def local_stream(switch: "Switch", arg: str) -> str:
    return local_stream_show(switch.sounds, arg)


def file_exists(switch: "Switch", arg: str) -> str:
    return "true" if switch.sounds.file_exists(arg) else "false"


def strepoch(switch: "Switch", arg: str) -> str:
    if arg.strip():
        try:
            return str(int(time.mktime(time.strptime(arg.strip(), "%Y-%m-%d %H:%M:%S"))))
        except ValueError:
            return "0"
    return str(int(switch.clock()))


def strftime(switch: "Switch", arg: str) -> str:
    """strftime [format]; FreeSWITCH refuses %s (no reply), so the clock comes from events or strepoch."""
    fmt = arg.strip() or "%Y-%m-%d %H:%M:%S"
    if "%s" in fmt:
        return "-ERR no reply\n"
    return time.strftime(fmt.replace("%T", "%H:%M:%S"), time.localtime(switch.clock()))


def version(switch: "Switch", arg: str) -> str:
    return f"FreeSWITCH Version {switch.identity.version} ( 64bit)\n"


CALL_COLUMNS = ("uuid", "direction", "created", "created_epoch", "name", "state", "cid_name", "cid_num", "ip_addr",
                "dest", "presence_id", "presence_data", "accountcode", "callstate", "callee_name", "callee_num",
                "callee_direction", "call_uuid", "hostname", "sent_callee_name", "sent_callee_num")
B_COLUMNS = ("uuid", "direction", "created", "created_epoch", "name", "state", "cid_name", "cid_num", "ip_addr",
             "dest", "presence_id", "presence_data", "accountcode", "callstate", "callee_name", "callee_num",
             "callee_direction", "sent_callee_name", "sent_callee_num")


def show(switch: "Switch", arg: str) -> str:
    """show channels|calls [count|as json], from the core database: as of its last batch (coredb)."""
    words = arg.split()
    what = words[0] if words else ""
    as_json = words[-2:] == ["as", "json"]
    if what not in ("channels", "calls"):
        return "-USAGE: show channels|calls [as json]\n"
    visible = switch.coredb.rows(switch.channels)
    if what == "channels":
        rows = [channel_row(switch, ch, snap) for ch, snap in visible]
    else:
        rows = call_rows(switch, visible)
    if words[1:2] == ["count"]:
        return f"\n{len(rows)} total.\n"
    if as_json:
        if not rows:
            return '{"row_count": 0}\n'
        # The recording: no newline after rows, unlike the empty form above.
        return json.dumps({"row_count": len(rows), "rows": rows}, separators=(",", ":"))
    if not rows:
        return "\n0 total.\n"
    cols = list(rows[0])
    lines = [",".join(cols)] + [",".join(r[c] for c in cols) for r in rows]
    return "\n".join(lines) + f"\n\n{len(rows)} total.\n"


def channel_row(switch: "Switch", ch, snap: tuple | None = None) -> dict[str, str]:
    """One row of show channels; snap is the channel as the core database last wrote it."""
    state, app, app_data, peer = snap if snap is not None else (ch.state, ch.app, ch.app_data,
                                                                 ch.peer.uuid if ch.peer else "")
    created = ch.times.get("created", 0) // 1_000_000
    ringing = state in ("new", "ringing")
    codec = ("", "", "") if ringing else ("PCMU", "8000", "64000")
    if ch.direction == "outbound" and ringing:
        # Not answered yet: the row still carries the originate's caller id (esl-captures 13).
        cid = (ch.cid_name, ch.cid_num, "Outbound Call", ch.dest, "")
    elif ch.direction == "outbound":
        cid = ("Outbound Call", ch.dest, ch.cid_name, ch.cid_num, "RECV")
    else:
        cid = (ch.cid_name, ch.cid_num, ch.cid_name, ch.cid_num, "RECV")
    if peer:
        app, app_data = "uuid_bridge", peer
        cs = "CS_SOFT_EXECUTE" if ch.bridge_a else "CS_EXCHANGE_MEDIA"
    else:
        cs = "CS_CONSUME_MEDIA" if ringing else "CS_EXECUTE"
    return {
        "uuid": ch.uuid, "direction": ch.direction,
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)), "created_epoch": str(created),
        "name": ch.channel_name, "state": cs, "cid_name": cid[0], "cid_num": cid[1],
        "ip_addr": "", "dest": ch.dest, "application": "" if ringing else app,
        "application_data": "" if ringing else app_data,
        "dialplan": "", "context": "default", "read_codec": codec[0], "read_rate": codec[1],
        "read_bit_rate": codec[2], "write_codec": codec[0], "write_rate": codec[1], "write_bit_rate": codec[2],
        "secure": "", "hostname": switch.identity.hostname, "presence_id": "", "presence_data": "",
        "accountcode": "", "callstate": "RINGING" if ringing else "ACTIVE",
        "callee_name": cid[2], "callee_num": cid[3], "callee_direction": cid[4],
        "call_uuid": ch.uuid, "sent_callee_name": "", "sent_callee_num": "",
        "initial_cid_name": ch.cid_name, "initial_cid_num": ch.cid_num, "initial_ip_addr": "",
        "initial_dest": ch.dest, "initial_dialplan": "", "initial_context": "default",
    }


def call_rows(switch: "Switch", visible: list) -> list[dict[str, str]]:
    """show calls: one row per call; a bridged pair is one row, its second leg in the b_ columns."""
    rows = {ch.uuid: (ch, channel_row(switch, ch, snap)) for ch, snap in visible}
    out, seen = [], set()
    for uuid, (ch, row) in rows.items():
        if uuid in seen:
            continue
        call = {k: row[k] for k in CALL_COLUMNS}
        peer = rows.get(row["application_data"]) if row["application"] == "uuid_bridge" else None
        if peer is not None:
            seen.add(peer[0].uuid)
            call.update({"b_" + k: peer[1][k] for k in B_COLUMNS})
            call["call_created_epoch"] = str(ch.times.get("bridged", 0) // 1_000_000)
        else:
            call.update({"b_" + k: "" for k in B_COLUMNS})
            call["call_created_epoch"] = ""
        out.append(call)
    return out


def originate(switch: "Switch", arg: str) -> str:
    """Blocking originate: answers only once the leg is up or has failed."""
    try:
        ch = switch.originate(arg)
    except OriginateError as e:
        return ORIGINATE_USAGE if e.cause == "USAGE" else f"-ERR {e.cause}\n"
    results: list[str] = []
    ch.job = results.append
    while not results:
        gevent.wait([ch.answered_event, ch.hungup_event], count=1)
        if ch.answered_event.is_set() and not results:
            results.append(f"+OK {ch.uuid}\n")
        elif ch.hungup_event.is_set() and not results:
            results.append(f"-ERR {ch.hangup_cause}\n")
    return results[0]


def _channel(switch: "Switch", arg: str):
    words = arg.split()
    ch = switch.channels.get(words[0]) if words else None
    return (ch if ch is not None and ch.alive else None), words


def uuid_kill(switch: "Switch", arg: str) -> str:
    ch, words = _channel(switch, arg)
    if ch is None:
        return NO_CHANNEL
    cause = words[1] if len(words) > 1 else "NORMAL_CLEARING"
    gevent.spawn(switch.hangup, ch, cause)
    gevent.sleep(0)
    return "+OK\n"


# Headers of a channel event that belong to the event, not the channel: uuid_dump leaves them out.
EVENT_ONLY = {"Bridge-A-Unique-ID", "Bridge-B-Unique-ID", "Direction", "Sent-Callee-ID-Name", "Sent-Callee-ID-Number",
              "Bridged-To", "Hangup-Cause", "Application", "Application-Data", "Application-Response",
              "Application-UUID", "Playback-File-Type", "Playback-File-Path", "Playback-Status", "DTMF-Digit",
              "DTMF-Duration", "DTMF-Source"}
DUMP_CALLER = [("Event-Calling-File", "mod_commands.c"), ("Event-Calling-Function", "uuid_dump_function"),
               ("Event-Calling-Line-Number", "6495")]


def channel_data(switch: "Switch", ch) -> Event:
    """The live session as uuid_dump reads it: the channel's headers and variables now."""
    template = ch.dump_template or switch.profile_connect
    tokens = ch.tokens()
    if ch.peer is not None:
        tokens.update(ch.peer.tokens("o_"))
    headers = render(template, switch.seq.common("CHANNEL_DATA"), tokens, ch.originate_vars, ch.vars)
    out = [("Event-Name", "CHANNEL_DATA")]
    for k, v in headers[1:]:
        if k == "Event-Calling-File":
            out.extend(DUMP_CALLER)
        elif k not in EVENT_ONLY and not k.startswith("Event-Calling-"):
            out.append((k, v))
    return Event(out, channel_uuid=ch.uuid)


def uuid_dump(switch: "Switch", arg: str) -> str:
    """The live session (not the core database): Answer-State is answered from the answer on."""
    ch, words = _channel(switch, arg)
    if not words:
        return "-USAGE: <uuid> [format]\n"
    if ch is None:
        return NO_CHANNEL
    event = channel_data(switch, ch)
    fmt = words[1].lower() if len(words) > 1 else ""
    if fmt == "json":
        return event.json_body().decode()
    if fmt == "xml":
        return event.xml_body().decode()
    return event.plain_body().decode()


def uuid_exists(switch: "Switch", arg: str) -> str:
    ch, _ = _channel(switch, arg)
    return "true" if ch is not None else "false"


def uuid_break(switch: "Switch", arg: str) -> str:
    from .apps import Break
    ch, _ = _channel(switch, arg)
    if ch is None:
        return NO_CHANNEL
    g = ch.app_greenlet
    if g is not None and not g.dead:
        g.kill(Break(), block=False)
    return "+OK\n"


def uuid_getvar(switch: "Switch", arg: str) -> str:
    ch, words = _channel(switch, arg)
    if ch is None:
        return NO_CHANNEL
    name = words[1] if len(words) > 1 else ""
    if name in ch.vars:
        return ch.vars[name]
    for k, v in ch.originate_vars:
        if k == name:
            return v
    builtin = {"uuid": ch.uuid, "caller_id_number": ch.cid_num, "destination_number": ch.dest,
               "hangup_cause": ch.hangup_cause}
    return builtin.get(name) or "_undef_"


def uuid_setvar(switch: "Switch", arg: str) -> str:
    ch, words = _channel(switch, arg)
    if ch is None:
        return NO_CHANNEL
    if len(words) < 2:
        return "-USAGE: <uuid> <var> [value]\n"
    value = arg.split(None, 2)[2] if len(words) > 2 else ""
    ch.set_var(words[1], value)
    return "+OK\n"


def uuid_setvar_multi(switch: "Switch", arg: str) -> str:
    ch, words = _channel(switch, arg)
    if ch is None:
        return NO_CHANNEL
    for item in arg.split(None, 1)[1].split(";") if len(words) > 1 else []:
        k, _, v = item.partition("=")
        ch.set_var(k, v)
    return "+OK\n"


def uuid_broadcast(switch: "Switch", arg: str) -> str:
    ch, words = _channel(switch, arg)
    if ch is None:
        return "-ERR invalid uuid\n"
    what = words[1] if len(words) > 1 else ""
    app, _, app_arg = what.partition("::")
    if not app_arg:
        app, app_arg = "playback", what
    if ch.session is not None or ch.direction == "inbound":
        queue_app(switch, ch, app, app_arg, str(uuidlib.uuid4()))
    else:
        gevent.spawn(switch.broadcast, ch, app, app_arg)
    return "+OK Message sent\n"


def uuid_bridge(switch: "Switch", arg: str) -> str:
    words = arg.split()
    if len(words) < 2:
        return "-USAGE: <uuid> <other_uuid>\n"
    a = switch.channels.get(words[0])
    b = switch.channels.get(words[1])
    if a is None or b is None or not a.alive or not b.alive or b.state == "ringing" or a.state == "ringing":
        return "-ERR Invalid uuid\n"
    switch.bridge(a, b)
    return f"+OK {b.uuid}\n"


def uuid_transfer(switch: "Switch", arg: str) -> str:
    ch, _ = _channel(switch, arg)
    return NO_CHANNEL if ch is None else "+OK\n"


def hostname(switch: "Switch", arg: str) -> str:
    return switch.identity.hostname


COMMANDS = {
    "status": status, "version": version, "show": show, "originate": originate,
    "uuid_kill": uuid_kill, "uuid_exists": uuid_exists, "uuid_break": uuid_break,
    "uuid_getvar": uuid_getvar, "uuid_setvar": uuid_setvar, "uuid_setvar_multi": uuid_setvar_multi,
    "uuid_broadcast": uuid_broadcast, "uuid_bridge": uuid_bridge, "uuid_transfer": uuid_transfer,
    "hostname": hostname, "switchname": hostname, "sim": control.sim, "uuid_dump": uuid_dump, "fsctl": fsctl,
    "global_getvar": global_getvar, "user_exists": user_exists, "sofia": sofia, "local_stream": local_stream,
    "file_exists": file_exists, "strepoch": strepoch, "strftime": strftime, "sofia_contact": phones.sofia_contact,
}
