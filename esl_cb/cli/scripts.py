"""esl-cb script: call scripts."""
from __future__ import annotations

import sys

import click

from .common import (
    EXIT_USAGE,
)


@click.group()
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
