"""Feature codes on the agent's phone (issue 20): a call the dialplan hands to our outbound socket
with `esl_cb_feature` set (freeswitch_conf/dialplan/default/60_esl_cb_features.xml) logs the agent
in or out, makes them available, puts them on a break (`esl_cb_feature_arg`: the reason code) or ends
their wrap-up, and confirms it with a stock prompt.

Who calls: when the dialplan says its callers authenticated (`esl_cb_trust_caller_id=true`), the
agent whose phone is the directory user the switch authenticated the call as (`user_name`, which
mod_sofia sets from the directory on a digest-authenticated INVITE); never the caller ID, which
FreeSWITCH takes from what the phone sends (From / Remote-Party-ID / P-Asserted-Identity: any
registered phone can send another agent's number). A call with no authenticated user, or one whose
user is no agent's phone, keys the login number and PIN (app/phones.py: hashed, wrong ones audited,
limited tries).
"""
from __future__ import annotations

import logging

from esl_cb.app.phones import (PHONE_FEATURES, PROMPT_AGENT_NUMBER, PROMPT_GOODBYE, PROMPT_PIN, PROMPT_REFUSED,
                               PROMPT_WRONG, TRIES_PER_CALL, PhoneService)
from esl_cb.db.store import Store
from esl_cb.domain.errors import EslCbError
from esl_cb.domain.runtime import ActionFailed, CallerGone
from esl_cb.esl.outbound import CallChannel

from .ports import CallerVoice, LiveCall

log = logging.getLogger(__name__)
FEATURE_VAR = "variable_esl_cb_feature"
# The directory user mod_sofia authenticated the call as (measured on FreeSWITCH 1.11: a phone
# authenticating as 1000 with From 7001 gives user_name=1000, sip_auth_username=1000, caller ID 7001).
AUTH_USER_VAR = "variable_user_name"
KEYS_TIMEOUT = 8.0


class FeatureCalls:
    def __init__(self, store: Store) -> None:
        self.phones = PhoneService(store)

    @staticmethod
    def wanted(channel: CallChannel) -> bool:
        return bool(channel.data.get(FEATURE_VAR))

    def on_call(self, channel: CallChannel) -> None:
        data = channel.data
        feature = data.get(FEATURE_VAR, "")
        user = data.get(AUTH_USER_VAR, "")
        caller = user or data.get("Caller-Caller-ID-Number", "")          # said in the log and audit
        voice = CallerVoice(LiveCall(0, channel))
        try:
            if feature not in PHONE_FEATURES:
                log.error("phone %s: unknown feature code %r (esl_cb_feature); hanging up", caller, feature)
                return
            name = None
            if data.get("variable_esl_cb_trust_caller_id") == "true" and user:
                name = self.phones.trusted_caller(user)
            if name is None:
                name = self._pin_login(voice, caller)
            if name is None:
                voice.play(PROMPT_GOODBYE, None)
                return
            try:
                done = self.phones.feature(name, feature, data.get("variable_esl_cb_feature_arg", ""), caller)
                log.info("agent %s: %s from phone %s (%s -> %s)", name, feature, caller, done.before, done.after)
            except EslCbError as e:
                log.info("agent %s: %s from phone %s refused: %s", name, feature, caller, e)
                if not self.phones.already(name, feature):      # offered a contact, on a call: not done
                    voice.play(PROMPT_REFUSED, None)
                    return
            voice.play(PHONE_FEATURES[feature][1], None)
        except (CallerGone, ActionFailed) as e:
            log.info("phone %s: feature call %s ended early (%s)", caller, feature, e or "caller hung up")
        finally:
            voice.live.expect_hangup = True
            channel.hangup()

    def _pin_login(self, voice: CallerVoice, caller: str) -> str | None:
        for _ in range(TRIES_PER_CALL):
            number = voice.capture(PROMPT_AGENT_NUMBER, 1, 16, KEYS_TIMEOUT, "#")
            pin = voice.capture(PROMPT_PIN, 1, 12, KEYS_TIMEOUT, "#") if number else ""
            if not number and not pin:
                return None
            result = self.phones.login(number, pin, caller)
            if result.name is not None:
                return result.name
            if result.why == "locked":
                return None
            voice.play(PROMPT_WRONG, None)
        return None
