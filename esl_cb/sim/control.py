"""The simulator's own api namespace, `api sim ...`: what tests and the demo use to play the world
around the switch (phones, callers, installed prompts, the directory) and to inspect it."""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import gevent

from .channel import EndpointBehaviour
from .config import Gateway

if TYPE_CHECKING:
    from .switch import Switch

NO_CHANNEL = "-ERR No such channel!\n"


def sim(switch: "Switch", arg: str) -> str:
    words = arg.split()
    if not words:
        return SIM_USAGE
    sub = words[0]
    try:
        if sub == "endpoint" and len(words) >= 3:
            number, mode = words[1], words[2]
            if mode == "answer":
                rest = words[3:]
                press, press_after, talk = "", 0.0, None
                if "talk" in rest:                # ... talk <s>: hangs up <s> after being bridged (a conversation)
                    i = rest.index("talk")
                    talk = float(rest[i + 1])
                    rest = rest[:i] + rest[i + 2:]
                if "press" in rest:               # ... press <keys> <after_s>: a phone that keys in after answering
                    i = rest.index("press")
                    press, press_after = rest[i + 1], float(rest[i + 2])
                    rest = rest[:i]
                delay = float(rest[0]) if rest else 0.2
                after = float(rest[1]) if len(rest) > 1 and rest[1] != "-" else None
                switch.endpoints[number] = EndpointBehaviour("answer", delay, after, press, press_after, talk)
            elif mode in ("busy", "noanswer", "reject", "fail"):
                switch.endpoints[number] = EndpointBehaviour(mode, float(words[3]) if len(words) > 3 else 0.0)
            else:
                return f"-ERR unknown endpoint mode {mode!r}: answer|busy|noanswer|reject|fail\n"
            return "+OK\n"
        if sub == "phone" and len(words) >= 3 and words[2] in ("register", "unregister", "expire"):
            from .phones import change      # sim phone N register|unregister|expire [DOMAIN]
            change(switch, words[1], words[2], words[3] if len(words) > 3 else "")
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
            ch = switch.channels.get(words[1])
            if ch is None:
                return NO_CHANNEL
            for d in words[2]:
                switch.deliver_dtmf(ch, d)
            return "+OK\n"
        if sub in ("prompt", "stream") and len(words) >= 3:
            return sim_sounds(switch, words)
        if sub in ("user", "gateway") and len(words) >= 3:
            return sim_config(switch, words)
        if sub == "coredb" and len(words) == 2:
            switch.coredb.interval = float(words[1])
            return "+OK\n"
        if sub == "clock" and len(words) == 2:
            return sim_clock(switch, float(words[1]))
        if sub == "hangup" and len(words) >= 2:
            ch = switch.channels.get(words[1])
            if ch is None:
                return NO_CHANNEL
            gevent.spawn(switch.hangup, ch, words[2] if len(words) > 2 else "NORMAL_CLEARING")
            return "+OK\n"
    except ValueError as e:
        return f"-ERR {e}\n"
    return SIM_USAGE


SIM_USAGE = ("-USAGE: sim endpoint <number> answer <delay_s> [hangup_after_s|-] [press <keys> <after_s>] "
             "[talk <s>]"
             "|busy|noanswer|reject|fail; "
             "sim call <from> <to_did> [dtmf <digits> <at_s>]... [hangup <at_s>]; sim calls; "
             "sim originates [from_index]; "
             "sim dtmf <uuid> <digits>; sim hangup <uuid> [cause]; sim prompt add|remove <path> [rate...]; "
             "sim stream add|remove <name>; sim user add|remove <id> [domain]; "
             "sim gateway add|remove|up|down <name> [profile]; sim coredb <batch_interval_s>; "
             "sim clock <offset_s>; sim phone <user> register|unregister|expire [domain]\n")


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
    if switch.socket_app is None:
        return "-ERR no socket application: run the switch in a Simulator\n"
    ch = switch.inbound_call(from_number, to_did)
    gevent.spawn(switch.socket_app, switch, ch, sorted(plan))
    return f"+OK {ch.uuid}\n"




def sim_sounds(switch: "Switch", words: list[str]) -> str:
    """sim prompt add|remove PATH [RATE...]; sim stream add|remove NAME."""
    kind, verb, name = words[0], words[1], words[2]
    if kind == "prompt" and verb == "add":
        made = switch.sounds.install(name, tuple(words[3:]) or ("8000",))
        return "+OK " + " ".join(made) + "\n"
    if kind == "prompt" and verb == "remove":
        return f"+OK {switch.sounds.remove(name)} file(s) removed\n"
    if kind == "stream" and verb == "add":
        switch.sounds.add_stream(name)
        return "+OK\n"
    if kind == "stream" and verb == "remove":
        return "+OK\n" if switch.sounds.remove_stream(name) else f"-ERR no local_stream {name}\n"
    return SIM_USAGE


def sim_config(switch: "Switch", words: list[str]) -> str:
    """sim user add|remove ID [DOMAIN]; sim gateway add|remove|down|up NAME [PROFILE]."""
    kind, verb, name = words[0], words[1], words[2]
    cfg = switch.config
    if kind == "user":
        key = (name, words[3] if len(words) > 3 else cfg.domain)
        if verb == "add":
            cfg.users.add(key)
        elif verb == "remove":
            cfg.users.discard(key)
        else:
            return SIM_USAGE
        return "+OK\n"
    if kind == "gateway":
        if verb == "add":
            cfg.gateways[name] = Gateway(words[3] if len(words) > 3 else "external", "127.0.0.1:5090")
        elif verb == "remove":
            cfg.gateways.pop(name, None)
        elif verb in ("up", "down") and name in cfg.gateways:
            cfg.gateways[name].up = verb == "up"
        else:
            return SIM_USAGE
        return "+OK\n"
    return SIM_USAGE


def sim_clock(switch: "Switch", offset: float) -> str:
    """Run the switch's clock `offset` seconds off the host's (for clock-agreement checks)."""
    def clock() -> float:
        return time.time() + offset
    switch.clock = switch.seq.clock = switch.coredb.clock = clock if offset else time.time
    return "+OK\n"
