"""API commands ('api X' / 'bgapi X') of the simulated switch, with FreeSWITCH's replies."""
from __future__ import annotations

import json
import time
import uuid as uuidlib
from typing import TYPE_CHECKING

import gevent

from .switch import EndpointBehaviour, OriginateError

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


def status(switch: "Switch", arg: str) -> str:
    return (f"UP {switch.uptime_text()}\n"
            f"FreeSWITCH (Version {switch.identity.version.split('~')[0]}  64bit) is ready\n"
            f"{switch.sessions_since_startup} session(s) since startup\n"
            f"{len(switch.channels)} session(s) - peak {switch.peak}, last 5min {switch.peak} \n"
            f"0 session(s) per Sec out of max 30, peak 0, last 5min 0 \n"
            f"{switch.max_sessions} session(s) max\n"
            f"min idle cpu 0.00/99.00\n"
            f"Current Stack Size/Max 240K/8192K\n")


def version(switch: "Switch", arg: str) -> str:
    return f"FreeSWITCH Version {switch.identity.version} ( 64bit)\n"


def show(switch: "Switch", arg: str) -> str:
    words = arg.split()
    what = words[0] if words else ""
    as_json = words[-2:] == ["as", "json"]
    if what not in ("channels", "calls"):
        return "-USAGE: show channels|calls [as json]\n"
    rows = [channel_row(switch, ch) for ch in switch.channels.values() if ch.alive]
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


def channel_row(switch: "Switch", ch) -> dict[str, str]:
    created = ch.times.get("created", 0) // 1_000_000
    return {
        "uuid": ch.uuid, "direction": ch.direction,
        "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created)), "created_epoch": str(created),
        "name": ch.channel_name, "state": "CS_EXECUTE" if ch.state != "ringing" else "CS_CONSUME_MEDIA",
        "cid_name": ch.cid_name if ch.direction == "inbound" else "Outbound Call",
        "cid_num": ch.cid_num if ch.direction == "inbound" else ch.dest,
        "ip_addr": "", "dest": ch.dest, "application": ch.app, "application_data": ch.app_data,
        "dialplan": "", "context": "default", "read_codec": "PCMU", "read_rate": "8000",
        "read_bit_rate": "64000", "write_codec": "PCMU", "write_rate": "8000", "write_bit_rate": "64000",
        "secure": "", "hostname": switch.identity.hostname, "presence_id": "", "presence_data": "",
        "accountcode": "", "callstate": "RINGING" if ch.state == "ringing" else "ACTIVE",
        "callee_name": ch.cid_name, "callee_num": ch.cid_num, "callee_direction": "RECV",
        "call_uuid": ch.uuid, "sent_callee_name": "", "sent_callee_num": "",
        "initial_cid_name": ch.cid_name, "initial_cid_num": ch.cid_num, "initial_ip_addr": "",
        "initial_dest": ch.dest, "initial_dialplan": "", "initial_context": "default",
    }


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
    from .connection import queue_app
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


# -- the simulator's own namespace: 'api sim ...' ------------------------
def sim(switch: "Switch", arg: str) -> str:
    words = arg.split()
    if not words:
        return SIM_USAGE
    sub = words[0]
    try:
        if sub == "endpoint" and len(words) >= 3:
            number, mode = words[1], words[2]
            if mode == "answer":
                delay = float(words[3]) if len(words) > 3 else 0.2
                after = float(words[4]) if len(words) > 4 else None
                switch.endpoints[number] = EndpointBehaviour("answer", delay, after)
            elif mode in ("busy", "noanswer", "reject", "fail"):
                switch.endpoints[number] = EndpointBehaviour(mode, float(words[3]) if len(words) > 3 else 0.0)
            else:
                return f"-ERR unknown endpoint mode {mode!r}: answer|busy|noanswer|reject|fail\n"
            return "+OK\n"
        if sub == "call" and len(words) >= 3:
            return sim_call(switch, words[1], words[2], words[3:])
        if sub == "calls":
            rows = [f"{c.uuid} {c.direction} {c.cid_num} {c.dest} {c.state} {c.app}"
                    for c in switch.channels.values()]
            return "\n".join(rows) + f"\n{len(rows)} total.\n"
        if sub == "originates":
            start = int(words[1]) if len(words) > 1 else 0
            legs = [dict(o, answered=switch.answered_at.get(o["uuid"]), ended=switch.ended_at.get(o["uuid"]),
                         hangup_sent=switch.hangup_sent.get(o["uuid"]))
                    for o in switch.originates[start:]]
            return json.dumps(legs) + "\n"
        if sub == "dtmf" and len(words) >= 3:
            from .apps import deliver_dtmf
            ch = switch.channels.get(words[1])
            if ch is None:
                return NO_CHANNEL
            for d in words[2]:
                deliver_dtmf(switch, ch, d)
            return "+OK\n"
        if sub == "hangup" and len(words) >= 2:
            ch = switch.channels.get(words[1])
            if ch is None:
                return NO_CHANNEL
            gevent.spawn(switch.hangup, ch, words[2] if len(words) > 2 else "NORMAL_CLEARING")
            return "+OK\n"
    except ValueError as e:
        return f"-ERR {e}\n"
    return SIM_USAGE


SIM_USAGE = ("-USAGE: sim endpoint <number> answer <delay_s> [hangup_after_s]|busy|noanswer|reject|fail; "
             "sim call <from> <to_did> [dtmf <digits> <at_s>]... [hangup <at_s>]; sim calls; sim originates [from_index]; "
             "sim dtmf <uuid> <digits>; sim hangup <uuid> [cause]\n")


def sim_call(switch: "Switch", from_number: str, to_did: str, rest: list[str]) -> str:
    plan: list[tuple[float, str, str]] = []
    i = 0
    while i < len(rest):
        if rest[i] == "dtmf" and i + 2 < len(rest):
            plan.append((float(rest[i + 2]), "dtmf", rest[i + 1]))
            i += 3
        elif rest[i] == "hangup" and i + 1 < len(rest):
            plan.append((float(rest[i + 1]), "hangup", ""))
            i += 2
        else:
            return f"-ERR unexpected {rest[i]!r}: sim call <from> <to_did> [dtmf <digits> <at_s>]... [hangup <at_s>]\n"
    ch = switch.inbound_call(from_number, to_did)
    gevent.spawn(switch.run_inbound, ch, sorted(plan))
    return f"+OK {ch.uuid}\n"


COMMANDS = {
    "status": status, "version": version, "show": show, "originate": originate,
    "uuid_kill": uuid_kill, "uuid_exists": uuid_exists, "uuid_break": uuid_break,
    "uuid_getvar": uuid_getvar, "uuid_setvar": uuid_setvar, "uuid_setvar_multi": uuid_setvar_multi,
    "uuid_broadcast": uuid_broadcast, "uuid_bridge": uuid_bridge, "uuid_transfer": uuid_transfer,
    "hostname": hostname, "sim": sim,
}
