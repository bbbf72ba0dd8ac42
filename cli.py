"""The esl-cb command line.

Exit codes (for scripts and monitoring):
  0  success
  1  the operation failed; the message says why and what to do
  2  bad usage or invalid input (unknown option, invalid number, invalid script)
  3  a service is unreachable (the database or FreeSWITCH)
"""
from __future__ import annotations

import json
import logging
import sys

import click

from esl_cb.netaddr import parse_hostport

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class HostPort(click.ParamType):
    name = "HOST:PORT"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            parse_hostport(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)
        return value


HOSTPORT = HostPort()


def fail(message: str, code: int = EXIT_FAILED) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def patch_gevent() -> None:
    """Cooperative sockets and a psycopg2 that never blocks the event loop; once, before any I/O."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()


def setup_logging(level: str, fmt: str) -> None:
    from esl_cb.logs import configure

    configure(level, fmt)


def console():
    """Rich console; piped output gets wide tables instead of squeezed columns."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def db_option(f):
    return click.option("--db", envvar="ESL_CB_DATABASE_URL", show_envvar=True,
                        help="SQLAlchemy URL, e.g. postgresql+psycopg2://postgres@127.0.0.1/eslcb")(f)


def open_store(db: str | None):
    from sqlalchemy.exc import OperationalError

    from esl_cb.db.store import Store

    if not db:
        fail("no database: pass --db URL or set ESL_CB_DATABASE_URL", EXIT_USAGE)
    store = Store(db)
    try:
        with store.engine.connect():
            pass
    except OperationalError as e:
        fail(f"cannot reach the database ({str(e.orig).strip().splitlines()[0]}); is PostgreSQL running and "
             "the URL right?", EXIT_UNREACHABLE)
    return store


def store_call(fn, *args, **kwargs):
    """Run a store operation and turn its errors into operator messages."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from esl_cb.db.store import NotFound, StoreError

    try:
        return fn(*args, **kwargs)
    except NotFound as e:
        fail(str(e))
    except StoreError as e:
        fail(str(e))
    except ProgrammingError as e:
        if "does not exist" in str(e.orig):
            fail("the database has no esl-cb tables yet: run `esl-cb db upgrade` first", EXIT_FAILED)
        raise
    except OperationalError as e:
        fail(f"database error: {str(e.orig).strip().splitlines()[0]}", EXIT_UNREACHABLE)


@click.group()
@click.version_option(package_name="esl-cb")
def main() -> None:
    """esl-cb: queued callbacks for FreeSWITCH contact centres.

    \b
    First steps:
      esl-cb demo                       # see it work against the built-in simulator
      esl-cb db upgrade --db URL        # create the tables
      esl-cb agent add alice --dial-string user/1001 --skill support
      esl-cb run --db URL --esl 127.0.0.1:8021
    """


# -- database --------------------------------------------------------------
@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@db_option
@click.option("--revision", default="head", show_default=True)
def db_upgrade(db: str | None, revision: str) -> None:
    """Create or update the tables and the reporting/billing views.

    \b
    Example:
      esl-cb db upgrade --db postgresql+psycopg2://postgres@127.0.0.1/eslcb
    """
    from esl_cb.db.migrate import upgrade

    open_store(db).close()
    upgrade(db, revision)
    click.echo(f"database is at revision {revision}")


# -- the controller ----------------------------------------------------------
@main.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML file of settings (same names as the options, e.g. dial_template: ...).")
@click.option("--esl", type=HOSTPORT, help="FreeSWITCH event socket. [default: 127.0.0.1:8021]")
@click.option("--esl-password", help="Event socket password (never logged). [default: ClueCon]")
@click.option("--listen", type=HOSTPORT, help="Our outbound-socket server for FreeSWITCH. [default: 127.0.0.1:8084]")
@db_option
@click.option("--script", type=click.Path(exists=True, dir_okay=False), help="Call script (YAML). [default: the example]")
@click.option("--dial-template", help="How to dial a customer, e.g. sofia/gateway/pstn/{number}.")
@click.option("--ports", type=int, help="Voice ports the callback dialler may use at once. [default: 30]")
@click.option("--originate-rate", type=float,
              help="Originates per second at most, below the switch's sessions-per-second. [default: 20]")
@click.option("--retry-interval", type=float, help="Seconds between callback attempts. [default: 300]")
@click.option("--max-attempts", type=int, help="Callback attempts before giving up. [default: 3]")
@click.option("--agent-ring-timeout", type=int, help="Seconds an agent's phone rings. [default: 20]")
@click.option("--callback-ring-timeout", type=int, help="Seconds the customer's phone rings. [default: 30]")
@click.option("--refused-reset", type=float, help="Seconds before a Refused agent is Available again (0: never).")
@click.option("--region", help="Country for numbers written without + (ISO code). [default: US]")
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics on 127.0.0.1:PORT (0: off).")
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
def run(config_file, log_level, log_format, **options) -> None:
    """Run the controller (every option may also be set as ESL_CB_<NAME> or in --config).

    \b
    Example:
      esl-cb run --db postgresql+psycopg2://postgres@127.0.0.1/eslcb \\
                 --esl 127.0.0.1:8021 --listen 127.0.0.1:8084 \\
                 --dial-template 'sofia/gateway/pstn/{number}'
    """
    patch_gevent()
    setup_logging(log_level, log_format)
    import gevent

    from esl_cb.config import ConfigError, load_settings
    from esl_cb.controller.service import Controller
    from esl_cb.domain import script as scripts

    try:
        settings = load_settings(config_file, options).validate()
    except ConfigError as e:
        fail(str(e), EXIT_USAGE)
    try:
        script = scripts.load(settings.script or scripts.DEFAULT_SCRIPT)
    except scripts.ScriptInvalid as e:
        fail(f"the script is invalid:\n{e}", EXIT_USAGE)
    for w in script.warnings:
        click.secho(str(w), fg="yellow", err=True)
    store = open_store(settings.db)
    store.controller_id = settings.controller_id
    controller = Controller(settings, store, script)
    try:
        controller.start()
    except OSError as e:
        fail(str(e), EXIT_FAILED)
    if settings.metrics_port:
        from esl_cb.controller.metrics import Metrics

        controller.metrics = Metrics(controller)
        port = controller.metrics.start(settings.metrics_port)
        logging.getLogger("esl_cb").info("metrics on http://127.0.0.1:%d/metrics", port)
    try:
        while True:
            gevent.sleep(3600)
    except KeyboardInterrupt:
        controller.stop()


@main.command()
@click.option("--log-level", default="WARNING", show_default=True)
def doctor(config_file, log_level, **options) -> None:
    """Check an installation as `run` would use it, without placing a call.

    \b
    One line per check, OK / WARN / FAIL, with what to do for each problem: FreeSWITCH's event socket
    and password, its version, max-sessions and sessions-per-second against --originate-rate, every
    prompt of the script, the database and its migrations, every agent's dial string and the dial
    template, and the clocks of this host, the switch and the database. Exit code 0 when nothing
    FAILs (warnings allowed), 1 otherwise. Takes the same options (and ESL_CB_* variables, --config)
    as `run`.

    \b
    Example:
      esl-cb doctor --db postgresql+psycopg2://postgres@127.0.0.1/eslcb --esl 127.0.0.1:8021
    """
    patch_gevent()
    setup_logging(log_level, "text")
    from esl_cb.config import ConfigError, load_settings
    from esl_cb.doctor import diagnose, exit_code, render
    from esl_cb.domain import script as scripts

    try:
        settings = load_settings(config_file, options)
        if settings.db:
            settings.validate()
    except ConfigError as e:
        fail(str(e), EXIT_USAGE)
    script, problem = None, ""
    try:
        script = scripts.load(settings.script or scripts.DEFAULT_SCRIPT)
    except scripts.ScriptInvalid as e:
        problem = "; ".join(str(p) for p in e.problems if p.severity == "error")
    results = diagnose(settings, script, problem)
    click.echo(render(results))
    sys.exit(exit_code(results))


# The same settings options as `run` (not its logging ones), so the doctor checks what run would use.
doctor.params[:0] = [p for p in run.params if p.name not in ("log_level", "log_format")]


# -- scripts -----------------------------------------------------------------
@main.group()
def script() -> None:
    """Call scripts."""


@script.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def script_check(file: str) -> None:
    """Validate a script file; every problem is listed with the action's caption.

    \b
    Example:
      esl-cb script check my-queue.yaml
    """
    from esl_cb.domain import script as scripts

    try:
        s = scripts.load(file)
    except scripts.ScriptInvalid as e:
        for p in e.problems:
            click.secho(str(p), fg="red" if p.severity == "error" else "yellow", err=True)
        errors = sum(p.severity == "error" for p in e.problems)
        click.secho(f"{file}: {errors} error(s); fix them and check again", fg="red", err=True)
        sys.exit(EXIT_USAGE)
    for w in s.warnings:
        click.secho(str(w), fg="yellow", err=True)
    click.echo(f"{file}: OK ({len(s.actions)} actions" + (f", {len(s.warnings)} warning(s))" if s.warnings else ")"))


# -- agents and skills --------------------------------------------------------
@main.group()
def agent() -> None:
    """Agents: who takes the calls."""


@agent.command("add")
@click.argument("name")
@click.option("--dial-string", required=True, help="How to ring the agent, e.g. user/1001.")
@click.option("--skill", "skills", multiple=True, required=True, help="A skill (repeat for several).")
@db_option
def agent_add(name: str, dial_string: str, skills: tuple[str, ...], db: str | None) -> None:
    """Add an agent (logged out until made available).

    \b
    Example:
      esl-cb agent add alice --dial-string user/1001 --skill support --skill sales
    """
    from esl_cb.esl.commands import UnsafeDialString, check_dial_string

    try:
        check_dial_string(dial_string)
    except UnsafeDialString as e:
        fail(str(e), EXIT_USAGE)
    store = open_store(db)
    store_call(store.add_agent, name, dial_string, skills)
    click.echo(f"agent {name} added ({dial_string}; skills: {', '.join(skills)}); "
               f"make them available with: esl-cb agent available {name}")


def _agent_state(name: str, db: str | None, to: str, allowed: list[str], verb: str) -> None:
    from esl_cb.domain.states import AgentState

    store = open_store(db)
    before = store_call(store.set_agent_state, name, AgentState(to), [AgentState(a) for a in allowed])
    store_call(store.notify, f"agent {name}")
    click.echo(f"agent {name}: {before.value} -> {to}")


@agent.command("available")
@click.argument("name")
@db_option
def agent_available(name: str, db: str | None) -> None:
    """Make an agent available for the next contact (also clears Refused).

    \b
    Example:
      esl-cb agent available alice
    """
    _agent_state(name, db, "Available", ["LoggedOut", "Refused", "Unavailable"], "available")


@agent.command("unavailable")
@click.argument("name")
@db_option
def agent_unavailable(name: str, db: str | None) -> None:
    """Stop offering contacts to an agent (a call in progress goes on).

    \b
    Example:
      esl-cb agent unavailable alice
    """
    _agent_state(name, db, "Unavailable", ["Available", "Refused", "LoggedOut"], "unavailable")


@agent.command("login")
@click.argument("name")
@db_option
def agent_login(name: str, db: str | None) -> None:
    """Log an agent in (Unavailable until made available).

    \b
    Example:
      esl-cb agent login alice && esl-cb agent available alice
    """
    _agent_state(name, db, "Unavailable", ["LoggedOut"], "login")


@agent.command("logout")
@click.argument("name")
@db_option
def agent_logout(name: str, db: str | None) -> None:
    """Log an agent out (refused while they are offered a contact or on a call).

    \b
    Example:
      esl-cb agent logout alice
    """
    _agent_state(name, db, "LoggedOut", ["Available", "Refused", "Unavailable"], "logout")


@agent.command("remove")
@click.argument("name")
@db_option
def agent_remove(name: str, db: str | None) -> None:
    """Delete an agent (refused while they are on a call).

    \b
    Example:
      esl-cb agent remove alice
    """
    store = open_store(db)
    store_call(store.remove_agent, name)
    click.echo(f"agent {name} removed")


@agent.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@db_option
def agent_list(as_json: bool, db: str | None) -> None:
    """List agents with state and skills.

    \b
    Example:
      esl-cb agent list --json
    """
    store = open_store(db)
    agents = store_call(store.agents)
    if as_json:
        click.echo(json.dumps(agents, default=str, indent=2))
        return
    from rich.table import Table

    table = Table("name", "state", "since", "dial string", "skills", "contact")
    for a in agents:
        table.add_row(a["name"], a["state"], f"{a['state_changed_at']:%H:%M:%S}", a["dial_string"],
                      ", ".join(a["skills"]), str(a["contact_id"] or ""))
    console().print(table)


@main.group()
def skill() -> None:
    """Skills (queues)."""


@skill.command("add")
@click.argument("name")
@db_option
def skill_add(name: str, db: str | None) -> None:
    """Add a skill (Reqagent also creates skills on first use).

    \b
    Example:
      esl-cb skill add billing
    """
    store = open_store(db)
    store_call(store.add_skill, name)
    click.echo(f"skill {name} ready")


@skill.command("list")
@db_option
def skill_list(db: str | None) -> None:
    """List skills.

    \b
    Example:
      esl-cb skill list
    """
    store = open_store(db)
    for name in store_call(store.list_skills):
        click.echo(name)


# -- watching and managing -----------------------------------------------------
@main.command()
@click.option("--once", is_flag=True, help="Print once and exit (default: refresh every second).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (implies --once).")
@click.option("--ports", type=int, default=None, help="The port limit to show (default: ESL_CB_PORTS or 30).")
@db_option
def status(once: bool, as_json: bool, ports: int | None, db: str | None) -> None:
    """Queues with effective priorities and waits, agents, callbacks, ports.

    \b
    Example:
      esl-cb status --once
      esl-cb status --json | jq '.queues'
    """
    import os
    import time

    from esl_cb.db import queries
    from esl_cb.ui import status_view

    store = open_store(db)
    limit = ports if ports is not None else int(os.environ.get("ESL_CB_PORTS", 30))
    if as_json:
        click.echo(json.dumps(store_call(queries.status, store, limit), default=str, indent=2))
        return
    from rich.live import Live

    if once or not sys.stdout.isatty():
        console().print(status_view(store_call(queries.status, store, limit)))
        return
    with Live(status_view(queries.status(store, limit)), refresh_per_second=1) as live:
        try:
            while True:
                time.sleep(1)
                live.update(status_view(queries.status(store, limit)))
        except KeyboardInterrupt:
            pass


@main.group()
def callback() -> None:
    """Queued callbacks: list, show, cancel."""


@callback.command("list")
@click.option("--all", "include_ended", is_flag=True, help="Include ended callbacks.")
@click.option("--json", "as_json", is_flag=True)
@db_option
def callback_list(include_ended: bool, as_json: bool, db: str | None) -> None:
    """List callbacks (open ones unless --all).

    \b
    Example:
      esl-cb callback list --all
    """
    from esl_cb.db import queries

    rows = store_call(queries.callbacks, open_store(db), include_ended)
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=2))
        return
    from rich.table import Table

    table = Table("contact", "skill", "number", "state", "outcome", "attempts", "agent", "requested")
    for r in rows:
        table.add_row(str(r["contact_id"]), r["skill"] or "", r["number"] or "", r["state"], r["outcome"] or "",
                      str(r["attempts"]), r["agent"] or "", f"{r['callback_requested_at']:%Y-%m-%d %H:%M:%S}"
                      if r["callback_requested_at"] else "")
    console().print(table)


@callback.command("show")
@click.argument("contact_id", type=int)
@db_option
def callback_show(contact_id: int, db: str | None) -> None:
    """Everything about one contact: times, attempts, legs.

    \b
    Example:
      esl-cb callback show 42
    """
    from esl_cb.db import queries

    click.echo(json.dumps(store_call(queries.contact_detail, open_store(db), contact_id), default=str, indent=2))


@callback.command("cancel")
@click.argument("contact_id", type=int)
@click.option("--reason", default="cancelled by operator", show_default=True)
@db_option
def callback_cancel(contact_id: int, reason: str, db: str | None) -> None:
    """Cancel a waiting callback (refused while it is being dialled or in conversation).

    \b
    Example:
      esl-cb callback cancel 42 --reason "customer called back"
    """
    store = open_store(db)
    before = store_call(store.cancel, contact_id, reason)
    store_call(store.notify, f"cancel {contact_id}")
    click.echo(f"contact {contact_id}: {before} -> cancelled")


@main.command()
@click.option("--from", "since", type=click.DateTime(), help="Contacts that arrived from (UTC).")
@click.option("--to", "until", type=click.DateTime(), help="... until before (UTC).")
@click.option("--csv", "as_csv", is_flag=True, help="One metric per line as CSV.")
@db_option
def report(since, until, as_csv: bool, db: str | None) -> None:
    """Summary of the reporting and billing views for a time range.

    \b
    Example:
      esl-cb report --from 2026-11-01 --to 2026-12-01 --csv
    """
    from datetime import timezone as tz

    from esl_cb.db import queries

    rep = store_call(queries.report, open_store(db), since and since.replace(tzinfo=tz.utc),
                     until and until.replace(tzinfo=tz.utc))
    lines = [("contacts", rep["contacts"])] + [(f"outcome_{k}", v) for k, v in sorted(rep["outcomes"].items())]
    lines += [("callback_rate", rep["callback_rate"]), ("average_wait_to_answer_s", rep["average_wait_to_answer_s"]),
              ("billed_outbound_seconds", rep["billed_outbound_seconds"])]
    if as_csv:
        click.echo("metric,value")
        for k, v in lines:
            click.echo(f"{k},{'' if v is None else v}")
        return
    for k, v in lines:
        click.echo(f"{k:28} {'-' if v is None else v}")


# -- the demo ------------------------------------------------------------------
@main.command()
@click.option("--speed", type=click.FloatRange(min=1), default=10.0, show_default=True,
              help="How many times faster than real time the demo runs.")
@click.option("--callers", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--agents", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--duration", type=click.FloatRange(min=1), default=120.0, show_default=True,
              help="Demo seconds during which callers arrive.")
@click.option("--seed", type=int, default=7, show_default=True)
@click.option("--db", help="Database URL (default: an SQLite file in a temporary folder).")
def demo(speed, callers, agents, duration, seed, db) -> None:
    """Watch esl-cb work: simulator + controller in one process, no set-up needed.

    \b
    Example:
      esl-cb demo --speed 20 --callers 40 --agents 4
      esl-cb demo --db postgresql+psycopg2://postgres@127.0.0.1/eslcb
    """
    patch_gevent()
    setup_logging("WARNING", "text")
    from esl_cb.demo import DemoOptions, run_demo

    interactive = sys.stdout.isatty()
    if db:
        open_store(db).close()
    rows = run_demo(DemoOptions(speed, callers, agents, duration, seed, db), interactive, click.echo)
    from rich.console import Console
    from rich.table import Table

    table = Table("summary (from reporting_contacts and billing_legs)", "", title="Reporting and billing")
    for k, v in rows:
        table.add_row(k, v)
    Console(force_terminal=interactive, width=100).print(table)


# -- the simulator ------------------------------------------------------------
@main.command()
@click.option("--listen", type=HOSTPORT, default="127.0.0.1:8021", show_default=True,
              help="Where the simulated switch accepts inbound ESL connections.")
@click.option("--password", default="ClueCon", show_default=True, help="ESL password clients must send.")
@click.option("--socket-target", type=HOSTPORT, default="127.0.0.1:8084", show_default=True,
              help="The controller's outbound-socket server that simulated calls are handed to.")
@click.option("--time-scale", type=click.FloatRange(min=0.0001), default=1.0, show_default=True,
              help="Multiply every simulated delay (ringing, prompts); 0.1 runs ten times faster.")
@click.option("--seed", type=int, default=None, help="Seed for the simulator's random choices.")
@click.option("--event-lag-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Hold events back like a real switch does (it polls every 20 ms).")
@click.option("--max-sessions", type=click.IntRange(min=1), default=5000, show_default=True)
@click.option("--sessions-per-second", type=click.IntRange(min=0), default=0, show_default=True,
              help="Refuse originates over this many new sessions a second, as FreeSWITCH does (0: no limit).")
def sim(listen, password, socket_target, time_scale, seed, event_lag_ms, max_sessions, sessions_per_second) -> None:
    """Run the FreeSWITCH simulator (speaks the real ESL wire protocol).

    \b
    Example:
      esl-cb sim --listen 127.0.0.1:8021 --socket-target 127.0.0.1:8084
      # then, from any ESL client:  api sim call 3125550199 5000 dtmf 1 31
    """
    patch_gevent()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from esl_cb.sim.server import Simulator

    server = Simulator(parse_hostport(listen), password=password, socket_target=parse_hostport(socket_target),
                       time_scale=time_scale, seed=seed, event_lag=event_lag_ms / 1000, max_sessions=max_sessions,
                       sessions_per_second=sessions_per_second)
    click.echo(f"FreeSWITCH simulator on {listen}; calls go to {socket_target}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
    except OSError as e:
        fail(f"cannot listen on {listen}: {e.strerror}", EXIT_FAILED)


if __name__ == "__main__":
    main()
