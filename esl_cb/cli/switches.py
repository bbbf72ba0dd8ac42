"""esl-cb switch: the FreeSWITCH switches of a fleet, their capacity (shared by all the controllers of
a switch) and their state (up, draining)."""
from __future__ import annotations

import json

import click

from .common import HOSTPORT, console, db_option, open_store, operator_option, store_call


@click.group()
def switch() -> None:
    """The FreeSWITCH switches controllers use (several controllers may share one)."""


@switch.command("add")
@click.argument("name")
@click.option("--esl", type=HOSTPORT, required=True, help="Its event socket, as its controllers' --esl.")
@click.option("--sessions-per-second", type=int, help="Its switch.conf.xml sessions-per-second: all its controllers "
                                                      "together originate at most 80% of it.")
@click.option("--max-sessions", type=int, help="Its max-sessions (shown; the switch enforces it).")
@click.option("--ports", "voice_ports", type=int, help="Callback voice ports on it, shared by its controllers.")
@db_option
@operator_option
def switch_add(name: str, esl: str, sessions_per_second: int | None, max_sessions: int | None,
               voice_ports: int | None, db: str | None, operator: str) -> None:
    """Register a switch.

    \b
    Example:
      esl-cb switch add fs-a --esl 10.0.0.11:8021 --sessions-per-second 30 --ports 60
    """
    store_call(open_store(db).add_switch, name, esl, sessions_per_second, max_sessions, voice_ports,
               operator=operator)
    click.echo(f"switch {name} at {esl} registered")


@switch.command("list")
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@db_option
def switch_list(as_json: bool, db: str | None) -> None:
    """Switches with their state, live controllers and calls in the air.

    \b
    Example:
      esl-cb switch list
    """
    from rich.table import Table

    rows = store_call(open_store(db).switches)
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=2))
        return
    table = Table("switch", "esl", "state", "controllers", "calls", "sps", "max sessions", "ports", "last seen")
    for w in rows:
        table.add_row(w["name"], w["esl"], w["state"], str(w["controllers"]), str(w["calls"]),
                      str(w["sessions_per_second"] or "-"), str(w["max_sessions"] or "-"), str(w["voice_ports"] or "-"),
                      f"{w['last_seen']:%Y-%m-%d %H:%M:%S}" if w["last_seen"] else "never")
    console().print(table)


def _state(name: str, state: str, db: str | None, operator: str) -> None:
    before = store_call(open_store(db).set_switch_state, name, state, operator=operator)
    click.echo(f"switch {name}: {before} -> {state}")


@switch.command("drain")
@click.argument("name")
@db_option
@operator_option
def switch_drain(name: str, db: str | None, operator: str) -> None:
    """Stop new work on a switch (no new offers or callbacks there); its calls finish.

    \b
    Example:
      esl-cb switch drain fs-a     # then: esl-cb switch list, until its calls are 0
    """
    _state(name, "draining", db, operator)


@switch.command("undrain")
@click.argument("name")
@db_option
@operator_option
def switch_undrain(name: str, db: str | None, operator: str) -> None:
    """Take new work on a drained switch again.

    \b
    Example:
      esl-cb switch undrain fs-a
    """
    _state(name, "up", db, operator)


@switch.command("remove")
@click.argument("name")
@db_option
@operator_option
def switch_remove(name: str, db: str | None, operator: str) -> None:
    """Forget a switch (refused while it has calls in the air: drain it first).

    \b
    Example:
      esl-cb switch remove fs-a
    """
    store_call(open_store(db).remove_switch, name, operator=operator)
    click.echo(f"switch {name} removed")
