"""esl-cb callback: queued callbacks, listed, shown, cancelled."""
from __future__ import annotations

import json

import click

from .common import (
    EXIT_USAGE,
    console,
    db_option,
    fail,
    open_store,
    operator_option,
    store_call,
)
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
    store = open_store(db)
    before = store_call(store.cancel, contact_id, reason, operator=operator)
    store_call(store.notify, f"cancel {contact_id}")
    click.echo(f"contact {contact_id}: {before} -> cancelled")


callback.add_command(policy)


@callback.command("schedule")
@click.argument("number")
@click.option("--skill", required=True, help="The skill (queue) whose agents will call.")
@click.option("--at", "when", required=True, help="When: 2026-12-01T14:30 (the skill's time zone unless given), "
                                                   "14:30 (the next one) or +3600 (seconds from now).")
@click.option("--caller-id", default="", help="The number the customer sees. [default: the number itself]")
@click.option("--priority", type=float, default=0.0, show_default=True)
@click.option("--expire-after", type=click.FloatRange(min=0), help="Seconds after --at before it expires.")
@click.option("--region", default="US", show_default=True, help="Country for numbers written without +.")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="The YAML file `run` uses (for the destination policy).")
@policy_options
@db_option
@operator_option
def callback_schedule(number: str, skill: str, when: str, caller_id: str, priority: float, expire_after, region: str,
                      config_file, db: str | None, operator: str, **policy) -> None:
    """Book a callback for later: an agent of SKILL is offered it at --at (within the skill's hours),
    ahead of contacts queued after it at the same priority.

    \b
    Example:
      esl-cb callback schedule +13125550100 --skill support --at 2026-12-01T14:30 --caller-id +13125557000
    """
    from datetime import datetime, timezone

    from esl_cb.config import ConfigError, load_settings
    from esl_cb.domain.hours import parse_when
    from esl_cb.domain.numbers import InvalidNumber, normalize
    from esl_cb.domain.queue import Priority

    try:
        settings = load_settings(config_file, {**policy, "region": region})
        e164 = normalize(number, region)
        shown = normalize(caller_id, region) if caller_id else e164
    except ConfigError as e:
        fail(str(e), EXIT_USAGE)
    except InvalidNumber as e:
        fail(f"not a callback number: {e}", EXIT_USAGE)
    store = open_store(db)
    verdict = settings.policy().check(e164, override=store_call(store.overridden, e164))
    if not verdict.allowed:
        fail(f"{e164} may not be called back: {verdict.reason} (see esl-cb callback policy check)")
    tz = next((h.tz for _, name, h, _ in store_call(store.skill_calendars) if name == skill), "UTC")
    try:
        at = parse_when(when, datetime.now(timezone.utc), tz)
    except ValueError as e:
        fail(f"--at: {e}", EXIT_USAGE)
    cid = store_call(store.schedule_callback, e164, skill, at, shown, 0, Priority(priority, 0, priority),
                     expire_after, operator)
    store_call(store.notify, f"schedule {cid}")
    click.echo(f"contact {cid}: {e164} will be called back for {skill} from {at.isoformat()}")
