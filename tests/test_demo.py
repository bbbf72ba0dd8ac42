"""`esl-cb demo` finishes with every contact given an outcome, on the zero-setup default and on PostgreSQL."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_demo(*extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESL_CB_")}
    out = subprocess.run([sys.executable, "-c", "from cli import main; main()", "demo", "--duration", "20",
                          "--speed", "10", "--callers", "12", "--agents", "3", *extra],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def check_summary(text: str) -> None:
    contacts = int(re.search(r"contacts\s*│\s*(\d+)", text).group(1))
    outcomes = {m.group(1): int(m.group(2)) for m in re.finditer(r"│\s+(\w+)\s+│\s+(\d+)\s+│", text)}
    assert contacts == 12
    assert "open" not in outcomes                            # every contact has an outcome
    assert sum(v for k, v in outcomes.items() if k != "contacts") == contacts
    assert outcomes.get("callback_completed", 0) >= 1


def test_demo_on_the_embedded_default_database():
    check_summary(run_demo())


def test_demo_on_postgresql(pg_url):
    check_summary(run_demo("--db", pg_url))
