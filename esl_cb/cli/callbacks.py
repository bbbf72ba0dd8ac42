"""esl-cb callback: queued callbacks, listed, shown, cancelled."""
from __future__ import annotations

import json

import click

from .common import (
    console,
    db_option,
    open_store,
    operator_option,
    store_call,
)
from .policy import policy


@click.group()
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
@operator_option
def callback_cancel(contact_id: int, reason: str, db: str | None, operator: str) -> None:
    """Cancel a waiting callback (refused while it is being dialled or in conversation).

    \b
    Example:
      esl-cb callback cancel 42 --reason "customer called back"
    """
    store = open_store(db)
    before = store_call(store.cancel, contact_id, reason, operator=operator)
    store_call(store.notify, f"cancel {contact_id}")
    click.echo(f"contact {contact_id}: {before} -> cancelled")


callback.add_command(policy)
