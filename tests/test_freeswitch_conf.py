"""The drop-in FreeSWITCH configuration parses and matches what the controller expects by default."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from esl_cb.config import Settings

CONF = Path(__file__).resolve().parent.parent / "freeswitch_conf"


def test_every_file_is_well_formed_xml():
    files = sorted(CONF.rglob("*.xml"))
    assert len(files) == 5
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


VANILLA_USERS = {str(n) for n in range(1000, 1020)} | {"brian", "default", "example.com"}


def test_example_agent_is_dialable_as_documented_and_not_a_vanilla_user():
    user = ET.parse(CONF / "directory/default/esl_cb_agent_7001.xml").getroot().find("user")
    assert user.get("id") == "7001" not in VANILLA_USERS
    readme = (CONF / "README.md").read_text()
    assert "--dial-string user/7001" in readme and "esl-cb agent available" in readme
    assert "1001-esl-cb-agent.xml" in readme          # upgrading operators are told to delete it


def test_every_placeholder_is_a_change_me_the_readme_greps_for():
    """README step 4: `grep -rn CHANGE_ME` prints nothing once everything is filled in, so the
    placeholders are values, never comments (a comment would keep matching)."""
    hits = [(f.name, line.strip()) for f in sorted(CONF.rglob("*.xml"))
            for line in f.read_text().splitlines() if "CHANGE_ME" in line]
    assert [name for name, _ in hits] == ["50_esl_cb.xml", "esl_cb_agent_7001.xml", "esl_cb_pstn.xml"]
    assert all('value="' in line or 'expression="' in line for _, line in hits)


def test_did_pattern_is_a_placeholder_that_matches_no_number():
    cond = ET.parse(CONF / "dialplan/public/50_esl_cb.xml").getroot().find(".//condition")
    assert cond.get("field") == "destination_number"
    assert re.fullmatch(r"\^\(CHANGE_ME\w*\)\$", cond.get("expression"))


def test_gateway_ships_as_an_ip_authenticated_trunk():
    params = {p.get("name"): p.get("value") for p in ET.parse(CONF / "sip_profiles/external/esl_cb_pstn.xml")
              .getroot().iter("param")}
    assert params["register"] == "false"
    assert "username" not in params and "password" not in params
