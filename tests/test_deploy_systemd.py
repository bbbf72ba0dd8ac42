"""deploy/systemd: the unit passes `systemd-analyze verify` (systemd's own tools; .ci/run installs them),
is hardened as systemd measures it, and its settings file names only real settings.

The unit runs /opt/esl-cb/bin/esl-cb, where the README installs the wheel; verify checks that
ExecStart's program exists, so the test verifies a copy whose ExecStart is rewritten to the esl-cb of
the virtual environment the tests run in (sys.prefix/bin/esl-cb), nothing else changed."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from esl_cb.config import ESL_PASSWORD_CREDENTIAL, PGPASS_CREDENTIAL, Settings, load_settings

SYSTEMD = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
UNIT = SYSTEMD / "esl-cb.service"
INSTALLED = "/opt/esl-cb/bin/esl-cb"


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.fail("systemd-analyze is not installed: apt-get install systemd (.ci/run installs it)", pytrace=False)
    return path


UNITS = sorted(SYSTEMD.glob("*.service"))       # each long-running process's unit (esl-cb api's, once it exists)


def unit_here(tmp_path: Path, unit: Path = UNIT) -> Path:
    """The unit with ExecStart pointing at this environment's esl-cb instead of /opt/esl-cb's."""
    esl_cb = Path(sys.prefix) / "bin" / "esl-cb"
    assert esl_cb.is_file(), f"{esl_cb}: the tests run from a virtual environment with esl-cb installed"
    text = unit.read_text()
    assert text.count(f"ExecStart={INSTALLED} ") == 1
    copy = tmp_path / unit.name
    copy.write_text(text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={esl_cb} "))
    return copy


def directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(\w+)=(.*)", line.strip())
        if m:
            out.setdefault(m.group(1), []).append(m.group(2))
    return out


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_systemd_analyze_verify_passes_without_a_warning(tmp_path, unit):
    unit = unit_here(tmp_path, unit)
    out = subprocess.run([systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values too, and only says so: any output is a failure.
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_the_unit_is_hardened_as_systemd_measures_it(tmp_path, unit):
    out = subprocess.run([systemd_analyze(), "security", "--offline=yes", str(unit_here(tmp_path, unit))],
                         capture_output=True, text=True, timeout=60)
    level = re.search(rf"Overall exposure level for {re.escape(unit.name)}: ([\d.]+)", out.stdout + out.stderr)
    assert level, out.stdout + out.stderr
    assert float(level.group(1)) <= 2.5, out.stdout


def test_the_unit_runs_the_controller_as_the_issue_asks():
    d = directives(UNIT.read_text())
    assert d["ExecStart"] == [f"{INSTALLED} run"]
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert int(d["WatchdogSec"][0]) >= 5
    assert d["Restart"] == ["on-failure"]
    assert d["DynamicUser"] == ["yes"] and d["User"] == ["esl-cb"]
    assert d["AmbientCapabilities"] == ["CAP_SYS_NICE"] and d["CapabilityBoundingSet"] == ["CAP_SYS_NICE"]
    assert "RestrictRealtime" not in d, "the controller's SCHED_RR needs real-time scheduling"
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables"):
        assert d[hardening] == ["yes"], hardening
    assert d["ProtectSystem"] == ["strict"]
    assert d["EnvironmentFile"] == ["/etc/esl-cb/esl-cb.env"]
    credentials = {value.split(":", 1)[0] for value in d["LoadCredential"]}
    assert credentials == {ESL_PASSWORD_CREDENTIAL, PGPASS_CREDENTIAL}, "the names the controller reads"
    seconds = int(d["TimeoutStopSec"][0])
    assert seconds > Settings().stop_grace, "systemd waits for the clean stop's grace"


def test_the_settings_file_names_only_settings_and_no_password():
    env = {}
    for line in (SYSTEMD / "esl-cb.env").read_text().splitlines():
        line = line.strip().lstrip("#").strip()
        m = re.fullmatch(r"(ESL_CB_\w+)=(.*)", line)
        if m:
            env[m.group(1)] = m.group(2)
    names = {f"ESL_CB_{f.upper()}" for f in Settings.__dataclass_fields__} | {"ESL_CB_DATABASE_URL"}
    assert set(env) <= names, set(env) - names
    assert not [k for k in env if "PASSWORD" in k]
    settings = load_settings(environ=env).validate()
    assert settings.metrics_port == 9464 and settings.realtime_priority == 20
    assert ":" not in settings.db.split("//")[1].split("@")[0], "no password in the URL"


API_UNIT = SYSTEMD / "esl-cb-api.service"


def test_the_api_unit_runs_the_api_unprivileged_with_the_database_credential_only():
    d = directives(API_UNIT.read_text())
    assert d["ExecStart"] == [f"{INSTALLED} api"]
    assert d["Restart"] == ["on-failure"]
    assert d["DynamicUser"] == ["yes"] and d["User"] == ["esl-cb-api"], "a user of its own, not the controller's"
    assert d["CapabilityBoundingSet"] == [""] and d["AmbientCapabilities"] == [""], "lowering its priority needs none"
    assert d["RestrictRealtime"] == ["yes"]
    for hardening in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables"):
        assert d[hardening] == ["yes"], hardening
    assert d["ProtectSystem"] == ["strict"]
    assert d["EnvironmentFile"] == ["/etc/esl-cb/esl-cb.env", "/etc/esl-cb/esl-cb-api.env"]
    assert [value.split(":", 1)[0] for value in d["LoadCredential"]] == [PGPASS_CREDENTIAL], "no ESL password"


def test_the_api_settings_file_names_only_options_of_esl_cb_api():
    from esl_cb.cli.api import api

    envvars = {p.envvar for p in api.params if getattr(p, "envvar", None)}
    env = {}
    for line in (SYSTEMD / "esl-cb-api.env").read_text().splitlines():
        m = re.fullmatch(r"(ESL_CB_\w+)=(.*)", line.strip().lstrip("#").strip())
        if m:
            env[m.group(1)] = m.group(2)
    assert env and set(env) <= envvars, set(env) - envvars
    assert not [k for k in env if "PASSWORD" in k or "TOKEN" in k]
