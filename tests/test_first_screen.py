"""`esl-cb demo`, tried as a new user would: no ERROR line that a new user cannot act on.

The simulator plays a switch with the stock English sounds installed (esl_cb/sim/sounds.py), so
every prompt of the example script is there and the demo names none as missing; a real switch
without them still gets the same checks (`run`'s start-up log, `doctor`).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from esl_cb.domain import script as scripts
from esl_cb.sim.sounds import Sounds

REPO = Path(__file__).resolve().parent.parent


def test_the_demo_prints_no_error_a_new_user_cannot_act_on():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESL_CB_")}
    out = subprocess.run([sys.executable, "-c", "from cli import main; main()", "demo", "--duration", "30",
                          "--speed", "10", "--callers", "12", "--agents", "3"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    errors = [line for line in (out.stdout + out.stderr).splitlines()
              if re.search(r"\b(ERROR|CRITICAL|Traceback)\b", line)]
    assert not errors, "\n".join(errors)
    # Nor a WARNING about something that is no fault: the example's Position and EWT prompts hold
    # variables by design (their fixed parts are checked at start, the rest when a call plays them).
    warnings = [line for line in (out.stdout + out.stderr).splitlines() if re.search(r"\bWARNING\b", line)]
    assert not warnings, "\n".join(warnings)


def test_the_simulator_has_every_prompt_the_example_script_plays():
    sounds = Sounds()
    example = scripts.load(scripts.DEFAULT_SCRIPT)
    for caption, prompt in scripts.script_prompts(example):
        if "{" in prompt:
            continue                  # its literal parts and the number files are listed after it
        assert sounds.playable(prompt) is not None, f"{caption}: {prompt}"
        if prompt.startswith("file_string://"):
            parts = prompt[len("file_string://"):].split("!")
            assert all(sounds.playable(p) for p in parts), f"{caption}: every part of {prompt}"
