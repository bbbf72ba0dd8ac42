"""The command line, through click's runner, against a real PostgreSQL: output, errors, exit codes."""
from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from cli import main
from esl_cb.db.store import Store

from .harness import TABLES


@pytest.fixture
def run(pg_url):
    store = Store(pg_url)
    with store.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    store.close()
    runner = CliRunner()

    def invoke(*args, env=None):
        return runner.invoke(main, list(args), env={"ESL_CB_DATABASE_URL": pg_url, **(env or {})},
                             catch_exceptions=False)
    return invoke


def test_db_upgrade_is_idempotent(run):
    r = run("db", "upgrade")
    assert r.exit_code == 0 and "revision head" in r.output


def test_agent_lifecycle(run):
    r = run("agent", "add", "alice", "--dial-string", "user/1001", "--skill", "support", "--skill", "sales")
    assert r.exit_code == 0 and "agent alice added" in r.output
    r = run("agent", "available", "alice")
    assert r.exit_code == 0 and "LoggedOut -> Available" in r.output
    r = run("agent", "available", "alice")
    assert r.exit_code == 1 and "already Available" in r.output
    r = run("agent", "list", "--json")
    assert '"state": "Available"' in r.output and '"sales"' in r.output
    assert run("agent", "unavailable", "alice").exit_code == 0
    assert run("agent", "logout", "alice").exit_code == 0
    r = run("agent", "logout", "alice")
    assert r.exit_code == 1 and "already LoggedOut" in r.output
    assert run("agent", "remove", "alice").exit_code == 0
    r = run("agent", "remove", "alice")
    assert r.exit_code == 1 and "no agent named 'alice'" in r.output


def test_agent_break_wrap_up_settings_and_report(run):
    run("agent", "add", "alice", "--dial-string", "user/1001", "--skill", "support")
    r = run("skill", "set", "support", "--wrap-up", "10", "--max-no-answer", "2")
    assert r.exit_code == 0 and "wrap_up_sec=10" in r.output and "max_no_answer=2" in r.output
    r = run("agent", "set", "alice", "--wrap-up", "skill", "--reject-delay", "5")
    assert r.exit_code == 0 and "wrap_up_sec=the skill's" in r.output and "reject_delay_sec=5" in r.output
    r = run("agent", "set", "alice", "--busy-delay", "soon")
    assert r.exit_code == 2 and "--busy-delay" in r.output
    assert run("skill", "set", "nosuch", "--wrap-up", "1").exit_code == 1
    run("agent", "available", "alice")
    r = run("agent", "break", "alice")
    assert r.exit_code == 2 and "--reason" in r.output
    r = run("agent", "break", "alice", "--reason", "lunch")
    assert r.exit_code == 0 and "Available -> OnBreak" in r.output
    r = run("agent", "list")
    assert "on break (lunch)" in r.output
    r = run("status", "--once")
    assert r.exit_code == 0 and "on break (lunch)" in r.output
    r = run("agent", "end-wrap-up", "alice")
    assert r.exit_code == 1 and "OnBreak" in r.output
    r = run("report", "agents")
    assert r.exit_code == 0 and "alice" in r.output and "lunch" in r.output
    r = run("report", "agents", "--json")
    assert '"agent_name": "alice"' in r.output


def test_agent_errors(run):
    r = run("agent", "add", "bob", "--dial-string", "user/1001,user/1002", "--skill", "s")
    assert r.exit_code == 2 and "no spaces, commas, pipes or braces" in r.output
    run("agent", "add", "bob", "--dial-string", "user/1002", "--skill", "s")
    r = run("agent", "add", "bob", "--dial-string", "user/1002", "--skill", "s")
    assert r.exit_code == 1 and "already exists" in r.output
    r = run("agent", "available", "nobody")
    assert r.exit_code == 1 and "no agent named 'nobody'" in r.output
    r = run("agent", "add", "carol", "--dial-string", "user/1003")
    assert r.exit_code == 2 and "--skill" in r.output


def test_skills(run):
    assert run("skill", "add", "billing").exit_code == 0
    assert run("skill", "list").output.split() == ["billing"]


def test_missing_and_unreachable_database():
    runner = CliRunner()
    r = runner.invoke(main, ["agent", "list"], env={"ESL_CB_DATABASE_URL": ""})
    assert r.exit_code == 2 and "no database" in r.output
    r = runner.invoke(main, ["agent", "list", "--db", "postgresql+psycopg2://postgres@127.0.0.1:1/none"])
    assert r.exit_code == 3 and "cannot reach the database" in r.output


def test_script_check(tmp_path):
    runner = CliRunner()
    from esl_cb.domain.script import DEFAULT_SCRIPT

    r = runner.invoke(main, ["script", "check", str(DEFAULT_SCRIPT)])
    assert r.exit_code == 0 and "OK (12 actions)" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("actions:\n  - action: Begin\n    Default: Nope\n  - action: Reqagent\n    Caption: Q\n"
                   "    Default: Q\n  - action: Callback\n    CallDelaySec: 75\n    Default: Q\n")
    r = runner.invoke(main, ["script", "check", str(bad)])
    assert r.exit_code == 2
    assert "action 'Begin': error: branch Default points at 'Nope'" in r.output
    assert "action 'Q': error: missing property 'Skill'" in r.output
    assert "action 'Callback': error: CallDelaySec must be a whole number from 0 to 59" in r.output
    assert "3 error(s)" in r.output or "error(s)" in r.output


def test_run_refuses_bad_settings(tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["run", "--db", "sqlite://", "--dial-template", "sofia/gateway/pstn/x,y{number}"])
    assert r.exit_code == 2 and "dial_template" in r.output
    r = runner.invoke(main, ["run", "--esl", "localhost"])
    assert r.exit_code == 2 and "needs a port" in r.output


def test_every_command_has_help_with_an_example():
    import click

    runner = CliRunner()

    def leaves(group, path):
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                yield from leaves(cmd, path + [name])
            else:
                yield path + [name]
    commands = list(leaves(main, []))
    assert len(commands) >= 19
    for args in commands:
        r = runner.invoke(main, args + ["--help"])
        assert r.exit_code == 0 and "Example" in r.output, args


def seed_contacts(pg_url):
    """Three contacts: a live caller waiting, a queued callback, and one being dialled."""
    from esl_cb.domain.queue import Priority

    store = Store(pg_url)
    for i, uuid in enumerate(("c-1", "c-2", "c-3"), 1):
        store.create_contact(uuid, f"312555010{i}", "3125557000", "example", f"312555010{i}", "3125557000")
        store.queue_contact(i, "support", Priority(10 * i, 0, 100))
    store.request_callback(2, "+13125550102", "+13125557000", 5, "+13125557000", "+13125550102")
    store.request_callback(3, "+13125550103", "+13125557000", 5, "+13125557000", "+13125550103")
    with store.engine.begin() as conn:
        for state in ("offered", "accepted", "dialling"):      # the way the state table allows
            conn.execute(text("UPDATE contacts SET state = :s WHERE id = 3"), {"s": state})
    store.close()


def test_status_callbacks_and_cancel(run, pg_url):
    import json

    seed_contacts(pg_url)
    r = run("status", "--json", "--ports", "4")
    st = json.loads(r.output)
    assert r.exit_code == 0
    assert [c["contact_id"] for c in st["queues"]["support"]] == [2, 1]    # priority 20 before 10
    assert st["queues"]["support"][0]["kind"] == "callback"
    assert st["ports"] == {"in_use": 1, "limit": 4}
    r = run("status", "--once")
    assert r.exit_code == 0 and "Queue" in r.output and "ports in use: 1 of 30" in r.output
    r = run("callback", "list")
    assert r.exit_code == 0 and "+13125550102" in r.output and "+13125550103" in r.output
    r = run("callback", "show", "2")
    assert r.exit_code == 0 and json.loads(r.output)["callback_number"] == "+13125550102"
    r = run("callback", "cancel", "3")
    assert r.exit_code == 1 and "it is being dialled" in r.output
    r = run("callback", "cancel", "2", "--reason", "customer called back")
    assert r.exit_code == 0 and "callback_queued -> cancelled" in r.output
    r = run("callback", "cancel", "2")
    assert r.exit_code == 1 and "already ended (cancelled)" in r.output
    r = run("callback", "show", "99")
    assert r.exit_code == 1 and "no contact 99" in r.output


def test_report(run, pg_url):
    seed_contacts(pg_url)
    run("callback", "cancel", "2")
    r = run("report", "--csv")
    assert r.exit_code == 0
    lines = dict(line.split(",", 1) for line in r.output.strip().splitlines()[1:])
    assert lines["contacts"] == "3" and lines["outcome_cancelled"] == "1"
    assert float(lines["callback_rate"]) == pytest.approx(2 / 3, abs=0.001)
    r = run("report", "--from", "2000-01-01", "--to", "2000-01-02")
    assert r.exit_code == 0 and "contacts" in r.output and " 0" in r.output
    r = run("report", "--from", "yesterday")
    assert r.exit_code == 2 and "yesterday" in r.output


def test_callback_schedule_books_through_the_service(run):
    import json

    for skill in ("support", "sales", "billing", "vip"):
        run("skill", "add", skill)
    r = run("callback", "schedule", "312-555-0100", "--skill", "support", "--at", "+3600", "--operator", "olga")
    assert r.exit_code == 0 and "contact 1: +13125550100 will be called back for support from" in r.output
    r = run("callback", "schedule", "+13125550100", "--skill", "support", "--at", "+60", "--caller-id",
            "+13125557000")
    assert r.exit_code == 0, r.output
    assert "contact 1: +13125550100 already waits for a callback for support; this booking joined it" in r.output
    assert [c["contact_id"] for c in json.loads(run("callback", "list", "--json").output)] == [1]
    r = run("callback", "schedule", "312 555 0100 ext 12", "--skill", "support", "--at", "+60")
    assert r.exit_code == 2
    assert "error [invalid_number]: number: '312 555 0100 ext 12' has an extension" in r.output
    r = run("callback", "schedule", "+13125550100", "--skill", "support", "--at", "tomorrow")
    assert r.exit_code == 2 and "error [invalid_input]: not_before: 'tomorrow' is not a time" in r.output
    assert "(--at)" in r.output
    r = run("callback", "schedule", "+13125550100", "--skill", "nobody", "--at", "+60")
    assert r.exit_code == 1 and "error [unknown_skill]: no skill named 'nobody' (esl-cb skill add nobody)" in r.output
    assert run("skill", "list").output.split() == ["billing", "sales", "support", "vip"]


def test_callback_schedule_policy_override_and_limits(run):
    for skill in ("support", "sales", "billing", "vip"):
        run("skill", "add", skill)
    r = run("callback", "schedule", "+19005550100", "--skill", "support", "--at", "+60")
    assert r.exit_code == 1
    assert "error [policy_refused]: +19005550100 may not be called back: a premium-rate number" in r.output
    assert run("callback", "policy", "override", "+19005550100", "--reason", "ticket 4711").exit_code == 0
    r = run("callback", "schedule", "+19005550100", "--skill", "support", "--at", "+60")
    assert r.exit_code == 0 and "allowed by an operator's override" in r.output
    for skill in ("support", "sales", "billing"):
        assert run("callback", "schedule", "+13125550111", "--skill", skill, "--at", "+60").exit_code == 0
    r = run("callback", "schedule", "+13125550111", "--skill", "vip", "--at", "+60")
    assert r.exit_code == 1 and "error [rate_limited]: +13125550111 was asked to be called back 3 times" in r.output
    r = run("callback", "schedule", "+13125550112", "--skill", "vip", "--at", "+60", "--callbacks-per-number-per-day",
            "-1")
    assert r.exit_code == 2 and "error [invalid_config]" in r.output


def test_cancel_and_agent_refusals_carry_their_codes(run, pg_url):
    seed_contacts(pg_url)
    r = run("callback", "cancel", "3")
    assert r.exit_code == 1 and "error [wrong_state]: contact 3 cannot be cancelled now: it is being dialled" in r.output
    assert run("callback", "cancel", "2").exit_code == 0
    r = run("callback", "cancel", "2")
    assert r.exit_code == 1 and "error [wrong_state]: contact 2 already ended (cancelled)" in r.output
    r = run("callback", "cancel", "99")
    assert r.exit_code == 1 and "error [not_found]: no contact 99" in r.output
    run("agent", "add", "alice", "--dial-string", "user/1001", "--skill", "support")
    assert "LoggedOut -> Unavailable" in run("agent", "login", "alice").output
    r = run("agent", "login", "alice")
    assert r.exit_code == 1 and "error [wrong_state]: agent 'alice' is already Unavailable" in r.output
    r = run("agent", "logout", "nobody")
    assert r.exit_code == 1 and "error [not_found]: no agent named 'nobody'" in r.output
    r = run("skill", "hours", "support", "--tz", "Mars/Olympus")
    assert r.exit_code == 2 and "error [invalid_hours]: skill support: time zone 'Mars/Olympus' is unknown" in r.output


def test_booking_and_cancelling_on_sqlite(tmp_path):
    """The demo's database: the same booking rules without PostgreSQL."""
    runner = CliRunner()
    db = f"sqlite:///{tmp_path / 'cli.db'}"

    def run(*args):
        return runner.invoke(main, [*args, "--db", db], catch_exceptions=False)
    assert run("db", "upgrade").exit_code == 0
    assert run("skill", "add", "support").exit_code == 0
    assert run("callback", "schedule", "3125550100", "--skill", "support", "--at", "+60").exit_code == 0
    r = run("callback", "schedule", "+13125550100", "--skill", "support", "--at", "+30")
    assert r.exit_code == 0 and "this booking joined it" in r.output
    r = run("callback", "schedule", "+13125550100", "--skill", "sales", "--at", "+30")
    assert r.exit_code == 1 and "error [unknown_skill]" in r.output
    r = run("callback", "cancel", "1")
    assert r.exit_code == 0 and "contact 1: callback_queued -> cancelled" in r.output
    r = run("callback", "cancel", "1")
    assert r.exit_code == 1 and "error [wrong_state]" in r.output


def test_status_shows_a_booking_for_later_as_due_not_as_a_negative_wait(run, pg_url):
    assert run("skill", "add", "support").exit_code == 0
    r = run("callback", "schedule", "+13125550100", "--skill", "support", "--at", "+600")
    assert r.exit_code == 0, r.output
    r = run("status", "--once")
    assert r.exit_code == 0
    import re
    assert re.search(r"due in (5\d\d|600)s", r.output), r.output
    assert not re.search(r"-\d+s", r.output), r.output


def test_agent_pin_and_why_an_agent_is_not_offered(run, pg_url):
    import json

    run("agent", "add", "pat", "--dial-string", "user/2001", "--skill", "support")
    r = CliRunner().invoke(main, ["agent", "pin", "pat", "--number", "2581"], input="1357\n1357\n",
                           env={"ESL_CB_DATABASE_URL": pg_url})
    assert r.exit_code == 0 and "log in on the phone with 2581" in r.output and "1357" not in r.output
    r = run("agent", "pin", "pat", "--pin", "12")
    assert r.exit_code != 0 and "4 to 12 digits" in r.output
    store = Store(pg_url)
    store.phones_checked("127.0.0.1:8021", {("2001", "127.0.0.1"): None})
    store.close()
    st = json.loads(run("status", "--json").output)
    assert [(a["name"], a["not_offered_because"]) for a in st["agents"]] == [("pat", "LoggedOut; phone not registered")]
    assert "phone not registered" in run("status", "--once").output
