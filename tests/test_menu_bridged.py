"""A live caller bridged to an agent while the callback menu's prompt plays is not a missing prompt.

FreeSWITCH ends such a play_and_get_digits at once with no read_result (measured:
tests/test_learned_menu_interrupted.py), the same as for a prompt it lacks. The controller
(esl_cb/controller/ports.py, CallerVoice._collect) reads every menu without a read_result as "the
prompt is not on the switch": it logs an ERROR naming a stock prompt the switch has (the first
screen of `esl-cb demo`, each time a caller in the menu gets an agent) and plays silence instead of
that prompt to every later caller. Fixed there: a menu that ends with no read_result while the caller
is being bridged to their agent returns no key and blames nothing.
"""
from __future__ import annotations

import logging

import gevent

from esl_cb.domain import script as scripts

from .fixtures import wait_until
from .harness import Harness

MENU_PROMPT = "ivr/ivr-if_you_would_like_us_to_call_back.wav"     # stock, on the simulator: 1.5 s

SCRIPT = f"""
name: menu-bridged
actions:
  - action: Begin
    Default: Queue
  - action: Reqagent
    Caption: Queue
    Skill: support
    Default: Offer callback
  - action: Menu
    Caption: Offer callback
    Prompt: {MENU_PROMPT}
    TimeoutSec: 5
    Default: Hold music
  - action: Play
    Caption: Hold music
    Prompt: local_stream://moh
    MaxDurationSec: 30
    Default: Offer callback
"""


def test_a_caller_bridged_during_the_menu_prompt_is_not_a_missing_prompt(pg_url, tmp_path, caplog):
    path = tmp_path / "menu-bridged.yaml"
    path.write_text(SCRIPT)
    h = Harness(pg_url, scripts.load(str(path)))
    try:
        h.agent("alice", "1001", answer=0.05)
        caller = h.call("3125550100")

        def in_the_prompt() -> bool:
            ch = h.sim.switch.channels.get(caller)
            return (ch is not None and ch.app == "play_and_get_digits" and ch.app_greenlet is not None
                    and not ch.app_greenlet.dead and not ch.reading)
        wait_until(in_the_prompt, 10, what="the caller hearing the menu's prompt")
        with caplog.at_level(logging.ERROR, logger="esl_cb"):
            h.available("alice")                      # offered, answers in 0.05 s: bridged mid-prompt
            h.wait_connected()
            gevent.sleep(0.3)                         # the menu's EXECUTE_COMPLETE reaches the script
        assert MENU_PROMPT not in h.controller.missing_prompts
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        h.close()
