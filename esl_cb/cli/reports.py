"""esl-cb status (live view) and esl-cb report (the reporting and billing views summed up)."""
from __future__ import annotations

import json
import sys

import click

from .common import (
    console,
    db_option,
    open_store,
    store_call,
)


@click.command()
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


@click.group(invoke_without_command=True)
@click.option("--from", "since", type=click.DateTime(), help="Contacts that arrived from (UTC).")
@click.option("--to", "until", type=click.DateTime(), help="... until before (UTC).")
@click.option("--csv", "as_csv", is_flag=True, help="One metric per line as CSV.")
@db_option
@click.pass_context
def report(ctx: click.Context, since, until, as_csv: bool, db: str | None) -> None:
    """Summary of the reporting and billing views for a time range (`report agents`: per agent and day).

    \b
    Example:
      esl-cb report --from 2026-11-01 --to 2026-12-01 --csv
      esl-cb report agents --from 2026-12-01
    """
    if ctx.invoked_subcommand is not None:
        return
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


def _hms(seconds) -> str:
    s = int(round(float(seconds or 0)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@report.command("agents")
@click.option("--from", "since", type=click.DateTime(formats=["%Y-%m-%d"]), help="Days from (YYYY-MM-DD).")
@click.option("--agent", help="One agent only.")
@click.option("--tz", help="The days' time zone (IANA name); default: the skills' when they share one, else UTC.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@db_option
def report_agents(since, agent: str | None, tz: str | None, as_json: bool, db: str | None) -> None:
    """Per agent and day: time logged in, available, on call, in wrap-up, on break by reason;
    contacts handled and missed; occupancy (offered + on call + wrap-up over those and available).

    \b
    From the view agent_day_report (migrations 0011, 0015): an interval over midnight counts on each
    day for its part; the days are those of --tz (UTC days on SQLite).
    Example:
      esl-cb report agents --from 2026-12-01 --tz Europe/Amsterdam
    """
    rows = store_call(open_store(db).agent_day_report, since.date() if since else None, agent, tz,
                      fields={"tz": "--tz"})
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=2))
        return
    from rich.table import Table

    table = Table("day", "agent", "logged in", "available", "on call", "wrap-up", "delays", "on break",
                  "handled", "missed", "occupancy", title="Agents by day")
    for r in rows:
        breaks = ", ".join(f"{k} {_hms(v)}" for k, v in sorted(r["breaks"].items()))
        table.add_row(r["day"], r["agent_name"], _hms(r["logged_in_sec"]), _hms(r["available_sec"]),
                      _hms(r["on_call_sec"]), _hms(r["wrap_up_sec"]), _hms(r["delay_sec"]),
                      _hms(r["on_break_sec"]) + (f" ({breaks})" if breaks else ""), str(r["handled"]),
                      str(r["missed"]), "-" if r["occupancy"] is None else f"{float(r['occupancy']):.0%}")
    console().print(table)
