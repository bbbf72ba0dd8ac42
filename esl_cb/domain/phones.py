"""Agents' phones: which directory user a dial string rings (tracked for registration), what a
registration event of the switch says, and PINs for the feature codes.

Measured on FreeSWITCH 1.11 (tests/captures/14-registrations.jsonl):
- sofia::register names the user in `to-user` (and `from-user`), its domain in `to-host` / `realm`;
  every REGISTER (a refresh too) sends one.
- sofia::unregister (a REGISTER with Expires: 0) has `from-user` and `from-host`; its `realm` reads
  `unknown`. sofia::expire has `user` and `host`. Neither says whether the user has bindings left:
  with `multiple-registrations` off (the default) a second phone replaced the first one's binding,
  and an un-REGISTER of the first Call-ID removed the user's only binding. So after either, ask the
  switch (`sofia_contact USER@DOMAIN`: `error/user_not_registered` when none is left).
- An expiry of a 5 s registration was announced 88 s after the REGISTER (the switch checks late).
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from .errors import InvalidInput

_USER_DIAL = re.compile(r"^user/([A-Za-z0-9_.+\-]{1,64})(?:@([A-Za-z0-9_.\-:]{1,128}))?$")
NOT_REGISTERED = "error/user_not_registered"


@dataclass(frozen=True)
class PhoneUser:
    user: str
    domain: str | None = None        # None: any domain (user/NAME rings the switch's default domain)

    def __str__(self) -> str:
        return f"{self.user}@{self.domain}" if self.domain else self.user


def tracked_phone(dial_string: str) -> PhoneUser | None:
    """The directory user an agent's dial string rings (`user/2001`, `user/2001@example.com`), whose
    registration decides whether the agent is offered; None for a gateway, a plain SIP URI (an agent
    registered at a proxy, e.g. Kamailio in a fleet) or a loopback: not tracked, offered as before."""
    m = _USER_DIAL.match(dial_string or "")
    return PhoneUser(m.group(1), m.group(2)) if m else None


@dataclass(frozen=True)
class RegistrationEvent:
    kind: str               # register | unregister | expire
    user: str
    domain: str
    contact: str


SUBCLASSES = {"sofia::register": "register", "sofia::unregister": "unregister", "sofia::expire": "expire"}


def registration_event(subclass: str, get) -> RegistrationEvent | None:
    """The event as the measured headers say it (get(name) -> value, '' when absent); None when it is
    not one of the three or names no user."""
    kind = SUBCLASSES.get(subclass)
    if kind is None:
        return None
    user = get("to-user") or get("from-user") or get("user") or get("username")
    # The directory domain: from-host. Measured on FreeSWITCH 1.11 vanilla with domain=pbx.test, a phone
    # registering to 127.0.0.1: register has from-host pbx.test (force-register-domain), to-host and realm
    # 127.0.0.1 (what the phone sent; realm is the challenge realm, auto_from); un-register has from-host
    # pbx.test and no to-host. Taking to-host first stored the row under the IP and the un-register then
    # missed it. Expire has neither: host (the stored sip_host).
    domain = get("from-host") or get("to-host") or get("host") or get("realm")
    if not user or user == "unknown":
        return None
    return RegistrationEvent(kind, user, domain if domain != "unknown" else "", get("contact"))


# -- PINs: scrypt from the standard library, a random salt each, compared in constant time ----------------
_SCRYPT = dict(n=2 ** 14, r=8, p=1)
PIN = re.compile(r"^[0-9]{4,12}$")


def check_pin(pin: str) -> str:
    if not PIN.fullmatch(pin or ""):
        raise InvalidInput("PIN: 4 to 12 digits (keyed on a phone)", where="pin")
    return pin


def hash_pin(pin: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(check_pin(pin).encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${salt.hex()}${digest.hex()}"


def pin_matches(pin: str, stored: str | None) -> bool:
    if not stored or not pin:
        return False
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        got = hashlib.scrypt(pin.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                             dklen=len(digest) // 2)
    except (ValueError, TypeError):
        return False
    return scheme == "scrypt" and hmac.compare_digest(got.hex(), digest)
