"""Agents on their phones (issue 20): PINs, who is calling a feature code, and what each code does.

The feature codes change an agent's state through AgentService, as the CLI does (audited, the
controllers woken). PHONE_FEATURES is the one place that says which change each code asks for: the
break is OnBreak with the code keyed as its reason, and *26 ends wrap-up.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from esl_cb.db.store import Store
from esl_cb.domain.errors import InvalidInput
from esl_cb.domain.phones import check_pin, hash_pin, pin_matches

from .agents import AGENT_CHANGES, AgentChange, AgentService
from .database import database_errors

log = logging.getLogger(__name__)

# Feature code (the dialplan's esl_cb_feature) -> the AgentService change it asks for (AGENT_CHANGES), and
# the stock prompt (FreeSWITCH's English sound package) that confirms it. A break or logout keyed during a
# call waits for its end, as from the CLI.
PHONE_FEATURES: dict[str, tuple[str, str]] = {
    "login": ("available", "ivr/ivr-you_are_now_logged_in.wav"),
    "logout": ("logout", "ivr/ivr-you_are_now_logged_out.wav"),
    "available": ("available", "ivr/ivr-thank_you.wav"),
    "break": ("break", "ivr/ivr-thank_you.wav"),
    "wrapup_end": ("end_wrap_up", "ivr/ivr-thank_you.wav"),
}
PROMPT_AGENT_NUMBER = "voicemail/vm-enter_id.wav"
PROMPT_PIN = "voicemail/vm-enter_pass.wav"
PROMPT_WRONG = "voicemail/vm-fail_auth.wav"
PROMPT_GOODBYE = "voicemail/vm-goodbye.wav"
PROMPT_REFUSED = "ivr/ivr-please_try_again.wav"      # the change cannot be made now (offered, on a call)
TRIES_PER_CALL = 3                 # wrong PINs in one call before it is hung up
LOCK_AFTER = 5                     # wrong PINs in a row (over calls) that lock the login number ...
LOCK_SECONDS = 300                 # ... for this long
# Made available from the phone: not offered while that phone is still on the feature call (a phone
# without call waiting answers 486 busy: a miss, and the busy delay).
FEATURE_CALL_HOLD = (6.0, "on the feature-code call")


@dataclass(frozen=True)
class LoginResult:
    name: str | None
    why: str = ""                  # when not: wrong_pin | unknown | locked


class PhoneService:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.agents = AgentService(store)

    @database_errors
    def set_pin(self, name: str, pin: str, login_number: str | None = None, operator: str | None = None) -> str:
        """Store the agent's PIN (scrypt) and the number they key to log in (default: their phone's user
        when it is digits, else their id). Returns the login number."""
        check_pin(pin)
        agent = self.store.agent(name)
        number = login_number or (agent.phone_user if (agent.phone_user or "").isdigit() else str(agent.id))
        if not number.isdigit() or len(number) > 16:
            raise InvalidInput("login number: digits only, at most 16", where="number")
        self.store.set_pin(name, hash_pin(pin), number, operator=operator)
        return number

    @database_errors
    def login(self, login_number: str, pin: str, caller: str) -> LoginResult:
        """An agent keyed their login number and PIN. A wrong PIN is audited and counted; too many in a
        row lock the login number for a while (a right PIN then fails too)."""
        record = self.store.login_record(login_number)
        if record is None:
            log.warning("phone %s: login number %r is nobody's", caller, login_number)
            return LoginResult(None, "unknown")
        name, stored, locked_until = record
        if locked_until is not None and locked_until > datetime.now(timezone.utc):
            log.warning("agent %s: login from phone %s refused: locked after wrong PINs until %s", name, caller,
                        f"{locked_until:%H:%M:%S}")
            return LoginResult(None, "locked")
        if not pin_matches(pin, stored):
            until = self.store.pin_failed(name, caller, LOCK_AFTER, LOCK_SECONDS)
            log.warning("agent %s: wrong PIN from phone %s%s", name, caller,
                        f"; login locked until {until:%H:%M:%S}" if until else "")
            return LoginResult(None, "wrong_pin")
        self.store.pin_ok(name)
        return LoginResult(name)

    @database_errors
    def trusted_caller(self, caller_user: str) -> str | None:
        """The agent whose phone is this directory user, for a dialplan that vouches for its caller ID."""
        return self.store.agent_of_phone(caller_user) if caller_user else None

    @database_errors
    def already(self, name: str, feature: str) -> bool:
        """The agent is where the feature code would take them (a refused change that needs no doing)."""
        to = AGENT_CHANGES[PHONE_FEATURES[feature][0]][0]
        return self.store.agent(name).state == to.value

    def feature(self, name: str, feature: str, reason: str = "", caller: str = "") -> AgentChange:
        """Do what the feature code asks (PHONE_FEATURES), as `phone CALLER` in the audit log; a break's
        reason is the code keyed after it (*25N: `code N`)."""
        change, _ = PHONE_FEATURES[feature]
        why = (f"code {reason}" if reason else "phone") if feature == "break" else None
        done = self.agents.set_agent_state(name, change, operator=f"phone {caller}"[:64], reason=why,
                                           hold=FEATURE_CALL_HOLD)
        if feature == "break":
            log.info("agent %s: on break (%s) from phone %s%s", name, why, caller,
                     "; it starts when the call ends" if done.when_call_ends else "")
        return done
