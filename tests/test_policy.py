"""The destination policy (issue 13): who may be called back, and the settings that say so."""
from __future__ import annotations

import pytest

from esl_cb.config import ConfigError, Settings
from esl_cb.domain.policy import DestinationPolicy, PolicyError

DEFAULT = DestinationPolicy.from_settings("US", "", ",".join(sorted(DestinationPolicy().refused_types)), "", "", 3, 5)


@pytest.mark.parametrize("number,allowed,rule", [
    ("+13125550100", True, "ok"),                 # a Chicago number
    ("+18005550100", True, "ok"),                 # toll-free: allowed by default
    ("+19005550100", False, "type"),              # premium-rate
    ("+15005550006", False, "type"),              # personal number
    ("+18765550100", False, "country"),           # Jamaica dials as +1: the classic callback-fraud range
    ("+442079460000", False, "country"),          # abroad: the region's country only by default
    ("+17005551234", False, "country"),           # belongs to no country
])
def test_default_policy(number, allowed, rule):
    v = DEFAULT.check(number)
    assert (v.allowed, v.rule) == (allowed, rule), v.reason
    assert number in str(v)


def test_refusals_say_why():
    assert "premium-rate" in DEFAULT.check("+19005550100").reason
    assert "JM" in DEFAULT.check("+18765550100").reason and "US" in DEFAULT.check("+18765550100").reason


def test_prefixes_and_overrides():
    p = DestinationPolicy.from_settings("US", "US,GB", "premium_rate", "+1900555", "+1312,+44207", 3, 5)
    assert p.check("+19005550100").allowed and p.check("+19005550100").rule == "allow_prefix"
    assert p.check("+19005560100").rule == "type"                     # the rest of +1900 stays refused
    assert p.check("+13125550100").rule == "deny_prefix"
    assert p.check("+442079460000").rule == "deny_prefix"
    assert p.check("+447700900123").rule == "country"                 # a UK drama number: valid for no country
    assert p.check("+13125550100", override=True).rule == "override"  # an operator's override wins
    both = DestinationPolicy.from_settings("US", "", "", "+1312", "+13125", 3, 5)
    assert both.check("+13125550100").rule == "deny_prefix"           # the longer prefix decides
    assert both.check("+13124550100").rule == "allow_prefix"


def test_any_country():
    p = DestinationPolicy.from_settings("US", "*", "premium_rate", "", "", 3, 5)
    assert p.check("+442079460000").allowed
    assert not p.check("+448712345678").allowed                       # a UK premium-rate number


@pytest.mark.parametrize("args,words", [
    (("US", "USA", "", "", "", 3, 5), "USA"),
    (("US", "", "premium", "", "", 3, 5), "premium"),
    (("US", "", "", "1900", "", 3, 5), "1900"),
    (("US", "", "", "", "+1-900", 3, 5), "+1-900"),
    (("US", "", "", "", "", -1, 5), "negative"),
])
def test_bad_settings_are_named(args, words):
    with pytest.raises(PolicyError, match=words.replace("+", r"\+")):
        DestinationPolicy.from_settings(*args)


def test_settings_carry_the_policy_and_refuse_open_listeners():
    s = Settings(db="sqlite://", allowed_countries="US,CA", deny_prefixes="+1900").validate()
    assert s.policy().allowed_countries == {"US", "CA"}
    with pytest.raises(ConfigError, match="allowed_countries"):
        Settings(db="sqlite://", allowed_countries="XX").validate()
    with pytest.raises(ConfigError, match="--allow-from"):
        Settings(db="sqlite://", listen="0.0.0.0:8084").validate()
    ok = Settings(db="sqlite://", listen="0.0.0.0:8084", allow_from="10.0.0.5").validate()
    assert [str(n) for n in ok.allowed_networks()] == ["10.0.0.5/32"]
    with pytest.raises(ConfigError, match="not an IP address"):
        Settings(db="sqlite://", allow_from="fs.example.com").validate()
    assert Settings(db="sqlite://").validate().security_warnings() == []
    warned = Settings(db="sqlite://", esl="10.0.0.5:8021").validate().security_warnings()
    assert len(warned) == 1 and "password" in warned[0]
