"""esl-cb demo: the simulator and the controller in one process, no set-up needed."""
from __future__ import annotations

import sys

import click

from .common import (
    open_store,
    patch_gevent,
    setup_logging,
)


@click.command()
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
