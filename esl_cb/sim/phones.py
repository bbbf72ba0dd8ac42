"""Phones registered at the simulated switch, as FreeSWITCH 1.11 reports them (learnt from the real
switch: tests/captures/14-registrations.jsonl, tools/capture_registrations.py).

- Every directory user is registered unless a test un-registers it (the simulator rings any
  `user/N`, as it always has): `sofia_contact N@DOMAIN` answers its contact, or
  `error/user_not_registered` for a user un-registered here.
- `sim phone N register|unregister|expire` (control.py) changes that and sends the CUSTOM event the
  real switch sends, with its headers in the same order: sofia::register, sofia::unregister (a
  REGISTER with Expires: 0; its realm reads `unknown`), sofia::expire.
"""
from __future__ import annotations

import itertools
import uuid as uuidlib
from typing import TYPE_CHECKING
from urllib.parse import unquote

from .events import Event

if TYPE_CHECKING:
    from .switch import Switch

PROFILE = "internal"
_CALL_IDS = itertools.count(1)
HEAD = ("Event-Subclass", "Event-Name", "Core-UUID", "FreeSWITCH-Hostname", "FreeSWITCH-Switchname", "FreeSWITCH-IPv4",
        "FreeSWITCH-IPv6", "Event-Date-Local", "Event-Date-GMT", "Event-Date-Timestamp", "Event-Calling-File",
        "Event-Calling-Function", "Event-Calling-Line-Number", "Event-Sequence")
CALLED_FROM = {"register": ("sofia_reg.c", "sofia_reg_handle_register_token", "2059"),
               "unregister": ("sofia_reg.c", "sofia_reg_handle_register_token", "2213"),
               "expire": ("sofia_reg.c", "sofia_reg_del_callback", "726")}


def _state(switch: "Switch") -> dict:
    if not hasattr(switch, "phones"):
        switch.phones = {"unregistered": set(), "call_ids": {}}
    return switch.phones


def contact(user: str, domain: str) -> str:
    return f"sip:{user}@{domain}:5062"


def sofia_contact(switch: "Switch", arg: str) -> str:
    who = arg.strip().split("/")[-1]
    user, _, domain = who.partition("@")
    if not user or user in _state(switch)["unregistered"]:
        return "error/user_not_registered"
    return f"sofia/{PROFILE}/{contact(user, domain or switch.config.domain)}"


def change(switch: "Switch", user: str, what: str, domain: str = "") -> Event:
    """A phone of `user` registers, un-registers or expires; the event is published."""
    state = _state(switch)
    domain = domain or switch.config.domain
    call_id = state["call_ids"].get(user) or f"sim-reg-{next(_CALL_IDS)}"
    if what == "register":
        state["unregistered"].discard(user)
        state["call_ids"][user] = call_id
    else:
        state["unregistered"].add(user)
        state["call_ids"].pop(user, None)
    common = switch.seq.common("CUSTOM")
    where = CALLED_FROM[what]
    values = {"Event-Subclass": f"sofia::{what}", "Event-Name": "CUSTOM", "Event-Calling-File": where[0],
              "Event-Calling-Function": where[1], "Event-Calling-Line-Number": where[2], **common}
    headers = [(k, values[k]) for k in HEAD]
    quoted = f'"" <{contact(user, domain)}>'
    if what == "register":
        headers += [("profile-name", PROFILE), ("from-user", user), ("from-host", domain), ("presence-hosts", "n/a"),
                    ("contact", quoted), ("call-id", call_id), ("rpid", "unknown"),
                    ("status", "Registered(UDP)"), ("expires", "3600"), ("to-user", user), ("to-host", domain),
                    ("network-ip", "127.0.0.1"), ("network-port", "5062"), ("username", "unknown"),
                    ("realm", domain), ("user-agent", "esl-cb-sim-phone")]
    elif what == "unregister":
        headers += [("profile-name", PROFILE), ("username", "unknown"), ("from-user", user), ("from-host", domain),
                    ("contact", quoted), ("call-id", call_id), ("rpid", "unknown"), ("realm", "unknown"),
                    ("network-ip", "127.0.0.1"), ("network-port", "5062"), ("user-agent", "esl-cb-sim-phone"),
                    ("expires", "0")]
    else:
        headers += [("profile-name", PROFILE), ("call-id", call_id), ("user", user), ("username", user),
                    ("host", domain), ("contact", quoted), ("expires", str(int(switch.clock()))),
                    ("user-agent", "esl-cb-sim-phone"), ("realm", domain), ("network-ip", "127.0.0.1"),
                    ("network-port", "5062")]
    event = Event(headers)
    switch.publish(event)
    return event


def sendevent(switch: "Switch", name: str, headers: list[tuple[str, str]]) -> str:
    """`sendevent NAME` with its headers (a controller's PRESENCE_IN): published to every listener."""
    common = switch.seq.common(name)
    switch.publish(Event([("Event-Name", name)] + list(common.items())
                         + [(k, unquote(v)) for k, v in headers if k != "Content-Length"]))
    return str(uuidlib.uuid4())
