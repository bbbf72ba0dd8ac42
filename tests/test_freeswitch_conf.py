"""The drop-in FreeSWITCH configuration parses and matches what the controller expects by default."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from esl_cb.config import Settings

CONF = Path(__file__).resolve().parent.parent / "freeswitch_conf"


def test_every_file_is_well_formed_xml():
    files = sorted(CONF.rglob("*.xml"))
    assert len(files) == 4
    for f in files:
        ET.parse(f)


def test_event_socket_matches_controller_defaults():
    params = {p.get("name"): p.get("value") for p in ET.parse(CONF / "autoload_configs/event_socket.conf.xml")
              .getroot().iter("param")}
    defaults = Settings()
    assert params["listen-ip"] == "127.0.0.1"                      # loopback only
    assert f"{params['listen-ip']}:{params['listen-port']}" == defaults.esl
    assert params["password"] == defaults.esl_password


def test_dialplan_hands_calls_to_the_controller():
    actions = [a for a in ET.parse(CONF / "dialplan/public/50_esl_cb.xml").getroot().iter("action")]
    apps = [(a.get("application"), a.get("data")) for a in actions]
    assert ("answer", None) in apps
    assert ("socket", f"{Settings().listen} async full") in apps
    assert [a for a, _ in apps].index("answer") < [a for a, _ in apps].index("socket")


def test_gateway_matches_the_default_dial_template():
    gw = ET.parse(CONF / "sip_profiles/external/esl_cb_pstn.xml").getroot().find("gateway")
    assert Settings().dial_template.startswith(f"sofia/gateway/{gw.get('name')}/")


def test_example_agent_is_dialable_as_documented():
    user = ET.parse(CONF / "directory/default/1001-esl-cb-agent.xml").getroot().find("user")
    assert user.get("id") == "1001"
