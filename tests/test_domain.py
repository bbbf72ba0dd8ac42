"""Numbers, queue order, state tables, configuration."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from esl_cb.config import ConfigError, load_settings
from esl_cb.domain.numbers import InvalidNumber, normalize, storable
from esl_cb.domain.queue import Priority, order_key
from esl_cb.domain.states import AgentState, ContactState, agent_can, contact_can
from esl_cb.esl.commands import UnsafeDialString, check_dial_string, dial_for, originate


@pytest.mark.parametrize("raw,e164", [
    ("3125550100", "+13125550100"), ("+1 (312) 555-0100", "+13125550100"), ("+44 20 7946 0958", "+442079460958"),
    ("312.555.0100", "+13125550100"),
])
def test_numbers_normalise_to_e164(raw, e164):
    assert normalize(raw) == e164


@pytest.mark.parametrize("raw,why", [
    ("1000,sofia/gateway/x/900", "only digits"), ("{x=y}123", "only digits"), ("312-555-0100 x12", "extension"),
    ("3125550100;ext=5", "extension"), ("", "empty"), ("12", "wrong number of digits"), ("+1 312\n555 0100", "only digits"),
    ("anonymous", "only digits"), ("3125550100|user/1", "only digits"), ("9" * 40, "too long"),
])
def test_numbers_reject_what_could_reach_a_dial_string(raw, why):
    with pytest.raises(InvalidNumber) as e:
        normalize(raw)
    if why:
        assert why in str(e.value)


def test_storable_strips_dial_string_syntax():
    assert storable("1000,sofia/gateway/x/900") == "1000sofiagatewayx900"


def test_effective_priority_accelerates_and_caps():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    p = Priority(10, 2, 15)
    assert p.effective(t0, t0) == 10
    assert p.effective(t0, t0 + timedelta(minutes=2)) == 14
    assert p.effective(t0, t0 + timedelta(minutes=10)) == 15


def test_order_higher_priority_then_earlier():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    now = t0 + timedelta(minutes=1)
    contacts = [(1, Priority(10, 0, 10), t0), (2, Priority(20, 0, 20), t0 + timedelta(seconds=30)),
                (3, Priority(10, 0, 10), t0 + timedelta(seconds=5))]
    ordered = sorted(contacts, key=lambda c: order_key(c[1], c[2], now, c[0]))
    assert [c[0] for c in ordered] == [2, 1, 3]


def test_acceleration_lets_a_long_waiter_overtake():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    now = t0 + timedelta(minutes=10)
    old = (1, Priority(5, 1, 50), t0)                         # 5 + 10 = 15 after ten minutes
    new = (2, Priority(12, 0, 12), now)
    assert sorted([new, old], key=lambda c: order_key(c[1], c[2], now, c[0]))[0][0] == 1


def test_state_tables():
    assert contact_can(ContactState.QUEUED, ContactState.CALLBACK_QUEUED)
    assert not contact_can(ContactState.ENDED, ContactState.QUEUED)
    assert not contact_can(ContactState.CALLBACK_QUEUED, ContactState.CONNECTED)
    assert agent_can(AgentState.OFFERED, AgentState.REFUSED)
    assert not agent_can(AgentState.LOGGED_OUT, AgentState.ON_CALL)


def test_dial_strings_cannot_be_injected():
    assert dial_for("sofia/gateway/pstn/{number}", "+13125550100") == "sofia/gateway/pstn/+13125550100"
    for bad in ("1000,sofia/gateway/x/900", "{x=y}123", "123 &park()"):
        with pytest.raises(UnsafeDialString):
            dial_for("sofia/gateway/pstn/{number}", bad)
    with pytest.raises(UnsafeDialString):
        check_dial_string("user/1001,user/1002")
    cmd = originate("u-1", "user/1001", {"origination_caller_id_name": "Callback {x=y},'z'", "n": 1})
    assert cmd == "originate {origination_uuid=u-1,origination_caller_id_name='Callback xyz',n=1}user/1001 &park()"


def test_config_layers_and_masking(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("ports: 5\nretry_interval: 60\nesl_password: filepw\n")
    s = load_settings(str(f), {"ports": 7, "region": None},
                      environ={"ESL_CB_RETRY_INTERVAL": "90", "ESL_CB_DATABASE_URL": "postgresql://u:secret@h/db"})
    assert (s.ports, s.retry_interval, s.esl_password, s.region) == (7, 90.0, "filepw", "US")
    masked = s.validate().masked()
    assert masked["esl_password"] == "***" and "secret" not in str(masked)


@pytest.mark.parametrize("content,message", [
    ("bogus: 1\n", "unknown setting 'bogus'"), ("ports: many\n", "not a valid int"), ("- a\n", "must be a mapping"),
])
def test_config_errors_are_clear(tmp_path, content, message):
    f = tmp_path / "c.yaml"
    f.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(str(f), {}, environ={})


def test_config_validation():
    with pytest.raises(ConfigError, match="no database"):
        load_settings(None, {}, environ={}).validate()
    with pytest.raises(ConfigError, match="dial_template"):
        load_settings(None, {"db": "sqlite://", "dial_template": "sofia/gateway/pstn/"}, environ={}).validate()
    with pytest.raises(ConfigError, match="esl"):
        load_settings(None, {"db": "sqlite://", "esl": "nohostport:abc"}, environ={}).validate()


def test_originate_rate_must_be_positive():
    with pytest.raises(ConfigError, match="originate_rate"):
        load_settings(None, {"db": "sqlite://", "originate_rate": 0}, environ={}).validate()


def test_the_miss_a_hangup_cause_means():
    """What mod_callcenter distinguishes (issue 20): each kind has its own delay."""
    from esl_cb.domain.states import Miss, miss_of

    assert miss_of("CALL_REJECTED") is Miss.REJECTED
    assert miss_of("USER_BUSY") is Miss.BUSY
    for cause in ("NO_ANSWER", "NO_USER_RESPONSE", "ALLOTTED_TIMEOUT", "SUBSCRIBER_ABSENT", None):
        assert miss_of(cause) is Miss.NO_ANSWER
