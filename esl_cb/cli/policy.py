"""esl-cb callback policy (where callbacks may go) and esl-cb audit (who did what)."""
from __future__ import annotations

import json
import sys
from datetime import datetime, timedelta, timezone

import click

from .common import EXIT_FAILED, EXIT_USAGE, console, db_option, fail, open_store, operator_option, store_call


def policy_options(f):
    """The destination policy's settings, shared by `run`, `doctor` and `callback policy check`."""
    for option in reversed([
        click.option("--allowed-countries", help="ISO country codes callbacks may go to, comma-separated; * for any. "
                                                 "[default: the --region country only]"),
        click.option("--refused-number-types", help="Number types never called back. [default: premium_rate,"
                                                    "shared_cost,uan,personal_number,pager,unknown]"),
        click.option("--allow-prefixes", help="E.164 prefixes always allowed, e.g. +1800 (comma-separated)."),
        click.option("--deny-prefixes", help="E.164 prefixes never dialled, e.g. +1900,+1876 (comma-separated)."),
        click.option("--callbacks-per-number-per-day", type=int,
                     help="Callbacks requested for one number in 24 hours, at most (0: no limit). [default: 3]"),
        click.option("--callbacks-per-caller-per-hour", type=int,
                     help="Callbacks one calling number may request in an hour (0: no limit). [default: 5]"),
    ]):
        f = option(f)
    return f


@click.group()
def policy() -> None:
    """Where callbacks may go: check a number, allow one by hand, see what was refused."""


@policy.command("check")
@click.argument("number")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="The same YAML file `run` uses.")
@click.option("--region", help="Country for numbers written without + (ISO code). [default: US]")
@policy_options
@click.option("--db", envvar="ESL_CB_DATABASE_URL", help="Also look for an override and count recent requests.")
def policy_check(number: str, config_file, db, **options) -> None:
    """Explain whether NUMBER may be called back, and why (exit 0: allowed, 1: refused).

    \b
    Example:
      esl-cb callback policy check +19005550100
      esl-cb callback policy check 0044 20 7946 0000 --allowed-countries US,GB
    """
    from esl_cb.config import ConfigError, load_settings
    from esl_cb.domain.numbers import InvalidNumber, normalize
    from esl_cb.domain.policy import classify

    try:
        settings = load_settings(config_file, options)
        policy_ = settings.policy()
        e164 = normalize(number, settings.region)
    except ConfigError as e:
        fail(str(e), EXIT_USAGE)
    except InvalidNumber as e:
        fail(f"not a callback number: {e}", EXIT_FAILED)
    override = False
    recent = None
    if db:
        store = open_store(db)
        override = store_call(store.overridden, e164)
        recent = store_call(store.recent_requests, e164)
    verdict = policy_.check(e164, override=override)
    country, kind = classify(e164)
    click.echo(f"number: {e164} (country {country or 'none'}, type {kind})")
    click.echo(f"verdict: {'ALLOWED' if verdict.allowed else 'REFUSED'} by rule '{verdict.rule}': {verdict.reason}")
    if recent is not None:
        click.echo(f"requested in the last 24 hours: {recent} (at most {policy_.limits.per_number_per_day or 'any'})")
    click.echo("policy:")
    for line in policy_.describe():
        click.echo(f"  {line}")
    sys.exit(0 if verdict.allowed else EXIT_FAILED)


@policy.command("override")
@click.argument("number")
@click.option("--reason", required=True, help="Why (it goes into the audit log).")
@click.option("--hours", type=click.FloatRange(min=0), default=24.0, show_default=True,
              help="How long the override lasts (0: until removed).")
@click.option("--remove", is_flag=True, help="Remove the override instead.")
@click.option("--region", default="US", show_default=True, help="Country for numbers written without +.")
@db_option
@operator_option
def policy_override(number: str, reason: str, hours: float, remove: bool, region: str, db: str | None,
                    operator: str) -> None:
    """Allow one number the policy refuses (audited); rate limits still apply.

    \b
    Example:
      esl-cb callback policy override +442079460000 --reason "UK customer, ticket 4711" --hours 48
    """
    from esl_cb.app import CallbackService

    service = CallbackService(open_store(db), region=region)
    if remove:
        e164 = store_call(service.remove_override, number, operator, fields={"number": "NUMBER"})
        click.echo(f"override for {e164} removed")
        return
    until = datetime.now(timezone.utc) + timedelta(hours=hours) if hours else None
    e164 = store_call(service.allow_number, number, reason, until, operator,
                      fields={"number": "NUMBER", "reason": "--reason"})
    click.echo(f"{e164} may be called back until {until:%Y-%m-%d %H:%M} UTC" if until else
               f"{e164} may be called back until the override is removed")


@policy.command("refusals")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@db_option
def policy_refusals(limit: int, as_json: bool, db: str | None) -> None:
    """The latest callbacks the policy refused (also in the policy_refusals table).

    \b
    Example:
      esl-cb callback policy refusals --limit 20
    """
    rows = store_call(open_store(db).refusals, limit)
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=2))
        return
    from rich.table import Table

    table = Table("at", "contact", "number", "calling", "stage", "rule", "reason")
    for r in rows:
        table.add_row(f"{r['at']:%Y-%m-%d %H:%M:%S}", str(r["contact_id"] or ""), r["number"], r["calling_number"],
                      r["stage"], r["rule"], r["reason"])
    console().print(table)


@click.command()
@click.option("--since", type=click.DateTime(), help="Entries from (UTC).")
@click.option("--limit", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@db_option
def audit(since, limit: int, as_json: bool, db: str | None) -> None:
    """Operators' actions, newest first: who, what, when (cancels, agent changes, policy overrides).

    \b
    Example:
      esl-cb audit --since 2026-11-01
    """
    rows = store_call(open_store(db).audit_log, since and since.replace(tzinfo=timezone.utc), limit)
    if as_json:
        click.echo(json.dumps(rows, default=str, indent=2))
        return
    from rich.table import Table

    table = Table("at", "operator", "action", "target", "detail")
    for r in rows:
        table.add_row(f"{r['at']:%Y-%m-%d %H:%M:%S}", r["operator"], r["action"], r["target"], r["detail"])
    console().print(table)
