"""Secrets off the command line: the ESL password from a file or a systemd credential, the database
password from a libpq password file (PGPASSFILE, or the credential pgpass); `run` warns of a password
given as an option; and no secret in any log line, `status` output or metric."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from esl_cb.config import ConfigError, load_settings, masked_url, pgpass_from_credentials

from .fixtures import wait_until
from .procs import REPO, free_port, wait_port

ESL_SECRET = "esl-S3cr3t-7f1d"
DB_SECRET = "db-S3cr3t-52aa"
PGPASS_SECRET = "pgpass-S3cr3t-9c0e"


def test_the_esl_password_from_a_file_or_a_systemd_credential(tmp_path):
    secret = tmp_path / "esl-password"
    secret.write_text(ESL_SECRET + "\n")
    assert load_settings(overrides={"esl_password_file": str(secret)}, environ={}).esl_password == ESL_SECRET
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "esl-password").write_text(ESL_SECRET)
    assert load_settings(environ={"CREDENTIALS_DIRECTORY": str(creds)}).esl_password == ESL_SECRET
    with pytest.raises(ConfigError, match=r"given 2 ways \(esl_password, esl_password_file\)"):
        load_settings(overrides={"esl_password": "x", "esl_password_file": str(secret)}, environ={})
    with pytest.raises(ConfigError, match="given 2 ways"):
        load_settings(overrides={"esl_password_file": str(secret)}, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    with pytest.raises(ConfigError, match=r"esl_password_file: cannot read .*nope: No such file"):
        load_settings(overrides={"esl_password_file": str(tmp_path / "nope")}, environ={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty; write the password on its first line"):
        load_settings(overrides={"esl_password_file": str(tmp_path / "empty")}, environ={})


def test_the_database_password_file_from_a_systemd_credential(tmp_path):
    assert pgpass_from_credentials({"CREDENTIALS_DIRECTORY": str(tmp_path)}) == ""
    (tmp_path / "pgpass").write_text("*:*:*:esl_cb:x\n")
    assert pgpass_from_credentials({"CREDENTIALS_DIRECTORY": str(tmp_path)}) == str(tmp_path / "pgpass")
    assert pgpass_from_credentials({"CREDENTIALS_DIRECTORY": str(tmp_path), "PGPASSFILE": "/etc/x"}) == ""
    assert masked_url(f"postgresql+psycopg2://u@h/db?sslmode=require&password={DB_SECRET}") == \
        "postgresql+psycopg2://u@h/db?sslmode=require&password=***"


def test_run_warns_of_a_password_on_the_command_line(tmp_path):
    bad_script = tmp_path / "bad.yaml"
    bad_script.write_text("name: x\nactions: []\n")          # stops `run` right after the warnings
    r = CliRunner().invoke(main, ["run", "--esl-password", ESL_SECRET, "--db",
                                  f"postgresql+psycopg2://esl_cb:{DB_SECRET}@127.0.0.1/eslcb", "--script",
                                  str(bad_script)], env={"ESL_CB_DATABASE_URL": None})
    assert r.exit_code == 2
    assert "the ESL password is on the command line" in r.output
    assert "the database password is in --db on the command line" in r.output
    assert ESL_SECRET not in r.output and DB_SECRET not in r.output
    r = CliRunner().invoke(main, ["run", "--script", str(bad_script)],
                           env={"ESL_CB_ESL_PASSWORD": ESL_SECRET, "ESL_CB_DATABASE_URL":
                                f"postgresql+psycopg2://esl_cb:{DB_SECRET}@127.0.0.1/eslcb"})
    assert r.exit_code == 2 and "on the command line" not in r.output      # the environment is not `ps`


def _esl_cb(args: list[str], env: dict[str, str], log: Path | None = None):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ESL_CB_", "PG", "CREDENTIALS_DIRECTORY"))}
    command = [sys.executable, "-c", "from cli import main; main()", *args]
    if log is None:
        return subprocess.run(command, cwd=REPO, env={**base, **env}, capture_output=True, text=True, timeout=60)
    return subprocess.Popen(command, cwd=REPO, env={**base, **env}, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def test_no_secret_in_the_logs_status_or_metrics(tmp_path, pg_url):
    esl_file = tmp_path / "esl-password"
    esl_file.write_text(ESL_SECRET + "\n")
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "esl-password").write_text(ESL_SECRET + "\n")
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"127.0.0.1:*:*:postgres:{PGPASS_SECRET}\n")
    pgpass.chmod(0o600)
    db_with_password = pg_url.replace("postgres@", f"postgres:{DB_SECRET}@")
    assert DB_SECRET in db_with_password
    sim_port, port, metrics_port = free_port(), free_port(), free_port()
    sim = _esl_cb(["sim", "--listen", f"127.0.0.1:{sim_port}", "--password", ESL_SECRET, "--socket-target",
                   f"127.0.0.1:{port}"], {}, tmp_path / "sim.log")
    controller = None
    try:
        wait_port(sim_port)
        controller = _esl_cb(["run", "--db", db_with_password, "--esl", f"127.0.0.1:{sim_port}", "--listen",
                              f"127.0.0.1:{port}", "--esl-password-file", str(esl_file), "--metrics-port",
                              str(metrics_port), "--log-level", "DEBUG"], {"PGPASSFILE": str(pgpass)},
                             tmp_path / "controller.log")
        wait_port(metrics_port)

        def scrape() -> str:
            return urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read().decode()
        wait_until(lambda: "esl_cb_esl_connected 1.0" in scrape(), 20,
                   what="connected to the switch with the password from the file")
        outputs = {"metrics": scrape()}
        for args in (["status", "--once"], ["status", "--json"], ["callback", "list"], ["agent", "list"]):
            r = _esl_cb([*args, "--db", db_with_password], {})
            assert r.returncode == 0, r.stderr
            outputs[" ".join(args)] = r.stdout + r.stderr
        r = _esl_cb(["doctor", "--db", pg_url, "--esl", f"127.0.0.1:{sim_port}"],
                    {"CREDENTIALS_DIRECTORY": str(creds), "PGPASSFILE": str(pgpass)})
        assert "accepted the password" in r.stdout, r.stdout      # the credential was read
        outputs["doctor"] = r.stdout + r.stderr
        controller.send_signal(signal.SIGTERM)
        assert controller.wait(20) == 0
        outputs["controller log"] = (tmp_path / "controller.log").read_text()
        assert "the database password is in --db on the command line" in outputs["controller log"]
        assert "started:" in outputs["controller log"] and "'esl_password': '***'" in outputs["controller log"]
        for where, text in outputs.items():
            for secret in (ESL_SECRET, DB_SECRET, PGPASS_SECRET):
                assert secret not in text, f"{secret} in the {where}"
    finally:
        for proc in (controller, sim):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(5)


def test_an_esl_cb_variable_nothing_reads_is_named_with_the_setting_it_resembles(caplog):
    environ = {"ESL_CB_DATABSE_URL": "postgresql://x", "ESL_CB_DIAL_TEMPLTE": "sofia/gateway/pstn/{number}",
               "ESL_CB_ESL": "127.0.0.1:8021", "ESL_CB_API_LISTEN": "127.0.0.1:8080", "ESL_CB_TEST_PG": "x",
               "ESL_CB_ZZZ": "1", "HOME": "/root"}
    with caplog.at_level(logging.WARNING, logger="esl_cb.config"):
        settings = load_settings(environ=environ)
    assert settings.esl == "127.0.0.1:8021"
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "environment variable ESL_CB_DATABSE_URL is no esl-cb setting and is ignored; did you mean "
        "ESL_CB_DATABASE_URL?",
        "environment variable ESL_CB_DIAL_TEMPLTE is no esl-cb setting and is ignored; did you mean "
        "ESL_CB_DIAL_TEMPLATE?",
        "environment variable ESL_CB_ZZZ is no esl-cb setting and is ignored"]
