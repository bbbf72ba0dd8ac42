"""SQL expressions that mirror domain rules, so the database can order a queue by them.

Each one must agree with its Python twin in esl_cb.domain (tests compare them row by row).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Float, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement


class minutes_between(FunctionElement):
    """Minutes from `since` to `until` (a float), in each dialect's own date arithmetic."""

    type = Float()
    name = "minutes_between"
    inherit_cache = True


@compiles(minutes_between, "postgresql")
def _minutes_pg(element, compiler, **kw) -> str:
    since, until = (compiler.process(c, **kw) for c in element.clauses)
    # date_part, not EXTRACT: EXTRACT returns numeric since PostgreSQL 14, several times slower to sort.
    return f"(date_part('epoch', {until} - {since}) / 60.0)"


@compiles(minutes_between, "sqlite")
def _minutes_sqlite(element, compiler, **kw) -> str:
    since, until = (compiler.process(c, **kw) for c in element.clauses)
    return f"((julianday({until}) - julianday({since})) * 1440.0)"


class least(FunctionElement):
    type = Float()
    name = "least"
    inherit_cache = True


class greatest(FunctionElement):
    type = Float()
    name = "greatest"
    inherit_cache = True


@compiles(least)
@compiles(greatest)
def _standard(element, compiler, **kw) -> str:
    return f"{element.name}({compiler.process(element.clauses, **kw)})"


@compiles(least, "sqlite")
def _least_sqlite(element, compiler, **kw) -> str:
    return f"min({compiler.process(element.clauses, **kw)})"     # SQLite's multi-argument min()


@compiles(greatest, "sqlite")
def _greatest_sqlite(element, compiler, **kw) -> str:
    return f"max({compiler.process(element.clauses, **kw)})"


def effective_priority(initial: ColumnElement, acceleration: ColumnElement, maximum: ColumnElement,
                       queued_at: ColumnElement, now: datetime) -> ColumnElement:
    """SQL twin of domain.queue.Priority.effective: min(initial + acceleration x minutes waited,
    max(maximum, initial)), minutes never negative."""
    minutes = greatest(minutes_between(queued_at, literal(now, DateTime(timezone=True))), 0.0)
    return least(initial + acceleration * minutes, greatest(maximum, initial))
