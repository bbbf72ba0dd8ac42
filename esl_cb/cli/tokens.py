"""esl-cb token: the HTTP API's bearer tokens (made, listed, revoked, given a webhook)."""
from __future__ import annotations

import json

import click

from .common import console, db_option, open_store, operator_option, store_call

ROLES = ["booking", "agent", "supervisor", "admin"]


@click.group()
def token() -> None:
    """Bearer tokens for the HTTP API (esl-cb api)."""


@token.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True,
              help="booking: books callbacks, sees its own; agent: its own agent; supervisor: every callback, "
                   "queue and agent; admin: as supervisor.")
@click.option("--agent", help="The agent an agent token acts for (required with --role agent).")
@click.option("--webhook", help="An https:// URL that receives each callback's outcome (signed).")
@db_option
@operator_option
def token_create(name: str, role: str, agent: str | None, webhook: str | None, db: str | None, operator: str) -> None:
    """Make a token. Its secret is printed once: only its SHA-256 is kept.

    \b
    Example:
      esl-cb token create website --role booking --webhook https://crm.example.com/esl-cb
      esl-cb token create alice --role agent --agent alice
    """
    from esl_cb.app.tokens import TokenService

    made = store_call(TokenService(open_store(db)).create, name, role, agent, webhook, operator,
                      fields={"agent": "--agent", "webhook": "--webhook", "name": "NAME"})
    click.echo(f"token {name} ({role}{', agent ' + agent if agent else ''}) made; its secret, shown only now:")
    click.echo(made.secret)
    if made.webhook_secret:
        click.echo(f"webhook {webhook}: outcomes are signed with this secret (header X-EslCb-Signature), shown "
                   "only now:")
        click.echo(made.webhook_secret)


@token.command("list")
@click.option("--json", "as_json", is_flag=True)
@db_option
def token_list(as_json: bool, db: str | None) -> None:
    """List tokens (never their secrets).

    \b
    Example:
      esl-cb token list
    """
    from esl_cb.app.tokens import TokenService

    tokens = store_call(TokenService(open_store(db)).list)
    if as_json:
        click.echo(json.dumps([t.__dict__ for t in tokens], default=str, indent=2))
        return
    from rich.table import Table

    table = Table("name", "role", "agent", "created", "revoked", "webhook")
    for t in tokens:
        table.add_row(t.name, t.role, t.agent or "", f"{t.created_at:%Y-%m-%d %H:%M}",
                      f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "", t.webhook_url or "")
    console().print(table)


@token.command("revoke")
@click.argument("name")
@db_option
@operator_option
def token_revoke(name: str, db: str | None, operator: str) -> None:
    """Revoke a token: the API refuses it within two seconds.

    \b
    Example:
      esl-cb token revoke website
    """
    from esl_cb.app.tokens import TokenService

    store_call(TokenService(open_store(db)).revoke, name, operator)
    click.echo(f"token {name} revoked")


@token.command("webhook")
@click.argument("name")
@click.argument("url", required=False)
@click.option("--off", is_flag=True, help="Remove the token's webhook.")
@db_option
@operator_option
def token_webhook(name: str, url: str | None, off: bool, db: str | None, operator: str) -> None:
    """Set a token's webhook (a new signing secret, printed once) or remove it (--off).

    \b
    Example:
      esl-cb token webhook website https://crm.example.com/esl-cb
    """
    from esl_cb.app.tokens import TokenService

    if bool(url) == off:
        raise click.UsageError("give a URL, or --off")
    secret = store_call(TokenService(open_store(db)).set_webhook, name, None if off else url, operator,
                        fields={"webhook": "URL"})
    if secret:
        click.echo(f"token {name}: outcomes go to {url}, signed with this secret (shown only now):")
        click.echo(secret)
    else:
        click.echo(f"token {name}: no webhook")
