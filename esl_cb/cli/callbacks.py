"""esl-cb callback: queued callbacks, listed, shown, cancelled."""
from __future__ import annotations

import json

import click

from .common import console, db_option, fail_error, open_store, operator_option, store_call
from .policy import policy, policy_options


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

    table = Table("contact", "skill", "number", "state", "outcome", "attempts", "agent", "requested", "not before",
                  "expires", "confirmed")
    when = lambda t: f"{t:%Y-%m-%d %H:%M:%S}" if t else ""  # noqa: E731
    for r in rows:
        table.add_row(str(r["contact_id"]), r["skill"] or "", r["number"] or "", r["state"], r["outcome"] or "",
                      str(r["attempts"]), r["agent"] or "", when(r["callback_requested_at"]), when(r["not_before"]),
                      when(r["expire_at"]), {True: "yes", False: "no"}.get(r["confirmed"], ""))
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
    from esl_cb.app import CallbackService

    done = store_call(CallbackService(open_store(db)).cancel_callback, contact_id, reason, operator,
                      fields={"reason": "--reason"})
    click.echo(f"contact {contact_id}: {done.was} -> cancelled")


callback.add_command(policy)


# The booking's fields, as this command names them (for its error messages).
SCHEDULE_FIELDS = {"number": "NUMBER", "skill": "--skill", "not_before": "--at", "caller_id": "--caller-id",
                   "priority": "--priority", "expire_after": "--expire-after"}


@callback.command("schedule")
@click.argument("number")
@click.option("--skill", required=True, help="The skill (queue) whose agents will call; it must exist (esl-cb skill "
                                              "add).")
@click.option("--at", "when", required=True, help="When: 2026-12-01T14:30 (the skill's time zone unless given), "
                                                   "14:30 (the next one) or +3600 (seconds from now).")
@click.option("--caller-id", default="", help="The number the customer sees. [default: the skill's caller ID "
                                              "(esl-cb skill caller-id), else the number itself]")
@click.option("--priority", type=float, help="Initial and maximum priority. [default: 0]")
@click.option("--expire-after", type=float, help="Seconds after --at before it expires (0: never). "
                                                 "[default: the skill's --expire-after]")
@click.option("--region", default="US", show_default=True, help="Country for numbers written without +.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="The YAML file `run` uses (for the destination policy).")
@policy_options
@db_option
@operator_option
def callback_schedule(number: str, skill: str, when: str, caller_id: str, priority: float | None, expire_after,
                      region: str, config_file, db: str | None, operator: str, **policy) -> None:
    """Book a callback for later: an agent of SKILL is offered it at --at (within the skill's hours),
    ahead of contacts queued after it at the same priority. The destination policy, the operators'
    overrides and the rate limits apply as to a script's Callback; a number that already waits for
    a callback of this skill keeps that one (and the earlier place) instead of getting a second.

    \b
    Example:
      esl-cb callback schedule +13125550100 --skill support --at 2026-12-01T14:30 --caller-id +13125557000
    """
    from esl_cb.app import CallbackService
    from esl_cb.config import ConfigError, load_settings

    from esl_cb.app.changes import CallerIds

    try:
        settings = load_settings(config_file, {**policy, "region": region})
        store = open_store(db)
        service = CallbackService(store, settings.policy(), settings.region)
    except ConfigError as e:
        fail_error(e)
    caller_id = store_call(CallerIds(store, settings.region).for_booking, skill, caller_id)   # else the skill's
    booking = store_call(service.book_callback, number, skill, caller_id, priority=priority, not_before=when,
                         expire_after=expire_after, operator=operator, fields=SCHEDULE_FIELDS)
    if booking.merged:
        click.echo(f"contact {booking.id}: {booking.number} already waits for a callback for {skill}; this booking "
                   "joined it (it keeps its time and the earlier place)")
    else:
        at = booking.not_before.isoformat() if booking.not_before else "now"
        click.echo(f"contact {booking.id}: {booking.number} will be called back for {skill} from {at}"
                   + (" (allowed by an operator's override of the destination policy)" if booking.override else ""))
