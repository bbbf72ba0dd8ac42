"""esl-cb run (the controller) and esl-cb doctor (checks an installation as run would use it)."""
from __future__ import annotations

import logging
import signal
import sys

import click

from .common import (
    EXIT_FAILED,
    EXIT_USAGE,
    HOSTPORT,
    db_option,
    fail,
    open_store,
    patch_gevent,
    setup_logging,
)
from .policy import policy_options


@click.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="YAML file of settings (same names as the options, e.g. dial_template: ...).")
@click.option("--esl", type=HOSTPORT, help="FreeSWITCH event socket. [default: 127.0.0.1:8021]")
@click.option("--esl-password", help="Event socket password (never logged; on the command line every local user "
                                     "sees it: prefer --esl-password-file). [default: ClueCon]")
@click.option("--esl-password-file", type=click.Path(dir_okay=False),
              help="Read the event socket password from this file (its first line). Under systemd, the "
                   "credential esl-password (LoadCredential=) is read without this option.")
@click.option("--listen", type=HOSTPORT, help="Our outbound-socket server for FreeSWITCH. [default: 127.0.0.1:8084]")
@db_option
@click.option("--script", type=click.Path(exists=True, dir_okay=False),
              help="Call script (YAML). [default: the example]")
@click.option("--dial-template", help="How to dial a customer, e.g. sofia/gateway/pstn/{number}.")
@click.option("--ports", type=int, help="Voice ports the callback dialler may use at once. [default: 30]")
@click.option("--originate-rate", type=float,
              help="Originates per second at most, below the switch's sessions-per-second. [default: 20]")
@click.option("--retry-interval", type=float, help="Seconds between callback attempts. [default: 300]")
@click.option("--max-attempts", type=int, help="Callback attempts before giving up. [default: 3]")
@click.option("--agent-ring-timeout", type=int, help="Seconds an agent's phone rings. [default: 20]")
@click.option("--callback-ring-timeout", type=int, help="Seconds the customer's phone rings. [default: 30]")
@click.option("--confirm-timeout", type=float,
              help="Seconds after answering for the customer's ConfirmKey. [default: 15]")
@click.option("--refused-reset", type=float, help="Seconds before a Refused agent is Available again (0: never).")
@click.option("--region", help="Country for numbers written without + (ISO code). [default: US]")
@click.option("--metrics-port", type=int, help="Serve Prometheus metrics on 127.0.0.1:PORT (0: off).")
@click.option("--realtime-priority", type=int,
              help="Run SCHED_RR at this priority (1-99), above FreeSWITCH's real-time 10, so the switch's media "
                   "threads never delay an answer or a due dial; needs CAP_SYS_NICE. [default: 0, normal]")
@click.option("--stop-grace", type=float,
              help="Seconds a stop (SIGTERM) waits for the work in flight: dials due by then, originates on "
                   "their way, bridges being made. [default: 10]")
@click.option("--allow-from", help="Addresses or networks FreeSWITCH connects from (comma-separated). "
                                   "[default: 127.0.0.0/8,::1]")
@click.option("--callback-wait-target",
              help="Seconds a due callback may wait for an agent, for the alert on "
                   "esl_cb_callback_oldest_wait_seconds: a number, or skill=seconds,... and a number for the "
                   "other skills (e.g. support=600,900). [default: 900]")
@click.option("--admission-max-lag", type=float,
              help="Seconds the event loop may run late before new callers wait for their first prompt "
                   "(admission control: due dials and agents' answers stay on time); 0 turns it off. "
                   "[default: 0.02]")
@click.option("--admission-max-wait", type=float,
              help="Seconds a new caller waits at most for admission. [default: 10]")
@click.option("--watchdog-max-lag", type=float,
              help="Under systemd's WatchdogSec=, feed the watchdog only while the event loop is late by less "
                   "than this (seconds). [default: 1]")
@policy_options
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
    for warning in secrets_on_the_command_line(click.get_current_context(), settings):
        logging.getLogger("esl_cb").warning("%s", warning)
    use_credentials()
    try:
        script = scripts.load(settings.script or scripts.DEFAULT_SCRIPT)
    except scripts.ScriptInvalid as e:
        fail(f"the script is invalid:\n{e}", EXIT_USAGE)
    for w in script.warnings:
        click.secho(str(w), fg="yellow", err=True)
    if settings.realtime_priority:
        from esl_cb.scheduling import SchedulingError, become_realtime

        try:
            become_realtime(settings.realtime_priority)
        except SchedulingError as e:
            fail(f"--realtime-priority: {e}", EXIT_FAILED)
        logging.getLogger("esl_cb").info("running SCHED_RR %d", settings.realtime_priority)
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
    # systemd (Type=notify, WatchdogSec=): READY=1 once connected, the watchdog fed while healthy.
    from esl_cb.systemd import ServiceNotifier

    notifier = ServiceNotifier(controller, settings.watchdog_max_lag, settings.esl).start()

    # SIGTERM (systemd's stop) and Ctrl-C: a clean stop, exit 0. A supervised greenlet that cannot be
    # kept alive ends the process non-zero, for systemd to start it again.
    def clean_stop() -> None:
        if not stopping:
            stopping.append(True)
            notifier.stopping()
            gevent.spawn(controller.shutdown, settings.stop_grace)
    stopping: list[bool] = []
    gevent.signal_handler(signal.SIGTERM, clean_stop)
    gevent.signal_handler(signal.SIGINT, clean_stop)
    gevent.wait([controller.stopped, controller.failed], count=1)
    notifier.stop()
    if controller.failed.is_set() and not controller.stopped.is_set():
        controller.stop()
        fail("a part of the controller could not be kept running (see the log above)", EXIT_FAILED)


@click.command()
@click.option("--log-level", default="WARNING", show_default=True)
def doctor(config_file, log_level, **options) -> None:
    """Check an installation as `run` would use it, without placing a call.

    \b
    One line per check, OK / WARN / FAIL, with what to do for each problem: FreeSWITCH's event socket
    and password, its version, max-sessions and sessions-per-second against --originate-rate, every
    prompt of the script, the database and its migrations, every agent's dial string and the dial
    template, the clocks of this host, the switch and the database, and the controller's CPU priority
    against a FreeSWITCH and a PostgreSQL on this host. Exit code 0 when nothing
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
    use_credentials()
    script, problem = None, ""
    try:
        script = scripts.load(settings.script or scripts.DEFAULT_SCRIPT)
    except scripts.ScriptInvalid as e:
        problem = "; ".join(str(p) for p in e.problems if p.severity == "error")
    results = diagnose(settings, script, problem)
    click.echo(render(results))
    sys.exit(exit_code(results))


def secrets_on_the_command_line(ctx: click.Context, settings) -> list[str]:
    """Passwords given as options: every user of this host reads them in `ps` and /proc."""
    from click.core import ParameterSource

    from esl_cb.config import url_password

    out = []
    if ctx.get_parameter_source("esl_password") == ParameterSource.COMMANDLINE:
        out.append("the ESL password is on the command line, where every user of this host can read it (ps): "
                   "use --esl-password-file FILE, the systemd credential esl-password (LoadCredential=) or "
                   "ESL_CB_ESL_PASSWORD in the unit's EnvironmentFile=")
    if ctx.get_parameter_source("db") == ParameterSource.COMMANDLINE and url_password(settings.db):
        out.append("the database password is in --db on the command line, where every user of this host can "
                   "read it (ps): put it in a libpq password file (PGPASSFILE, ?passfile= in the URL, or the "
                   "systemd credential pgpass) and leave it out of the URL")
    return out


def use_credentials() -> None:
    """A libpq password file passed by systemd (LoadCredential=pgpass:...) is where libpq looks."""
    import os

    from esl_cb.config import pgpass_from_credentials

    pgpass = pgpass_from_credentials(os.environ)
    if pgpass:
        os.environ["PGPASSFILE"] = pgpass


# The same settings options as `run` (not its logging ones), so the doctor checks what run would use.
doctor.params[:0] = [p for p in run.params if p.name not in ("log_level", "log_format")]
