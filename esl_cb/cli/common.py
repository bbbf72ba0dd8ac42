"""What every command shares: exit codes, error messages an operator can act on, the database
option and the store, gevent, logging, the console."""
from __future__ import annotations

import sys

import click

from esl_cb.netaddr import parse_hostport

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class HostPort(click.ParamType):
    name = "HOST:PORT"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            parse_hostport(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)
        return value


HOSTPORT = HostPort()


def fail(message: str, code: int = EXIT_FAILED) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def exit_code(error: Exception) -> int:
    """The README's exit code of a domain error: 2 for bad input, 3 for a service that does not
    answer, 1 for everything else that cannot be done."""
    from esl_cb.domain.errors import InvalidInput, Unavailable

    if isinstance(error, InvalidInput):
        return EXIT_USAGE
    if isinstance(error, Unavailable):
        return EXIT_UNREACHABLE
    return EXIT_FAILED


def fail_error(error, fields: dict[str, str] | None = None) -> None:
    """`error [code]: detail`, and the option it is about when the command names its fields
    (`fields`: the service's field -> this command's option)."""
    option = (fields or {}).get(error.where)
    click.secho(f"error [{error.code}]: {error.detail}" + (f" ({option})" if option else ""), fg="red", err=True)
    sys.exit(exit_code(error))


def patch_gevent() -> None:
    """Cooperative sockets and a psycopg2 that never blocks the event loop; once, before any I/O."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()


def setup_logging(level: str, fmt: str) -> None:
    from esl_cb.logs import configure

    configure(level, fmt)


def console():
    """Rich console; piped output gets wide tables instead of squeezed columns."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


def db_option(f):
    return click.option("--db", envvar="ESL_CB_DATABASE_URL", show_envvar=True,
                        help="SQLAlchemy URL, e.g. postgresql+psycopg2://postgres@127.0.0.1/eslcb")(f)


def operator_option(f):
    """Who does it, for the audit log (esl-cb audit): the OS user unless said otherwise."""
    import getpass

    try:
        default = getpass.getuser()
    except Exception:           # no user name in this environment
        default = "unknown"
    return click.option("--operator", envvar="ESL_CB_OPERATOR", show_envvar=True, default=default,
                        show_default="the OS user", help="Who does this, for the audit log.")(f)


def open_store(db: str | None):
    from sqlalchemy.exc import OperationalError

    from esl_cb.db.store import Store

    if not db:
        fail("no database: pass --db URL or set ESL_CB_DATABASE_URL", EXIT_USAGE)
    store = Store(db)
    try:
        with store.engine.connect():
            pass
    except OperationalError as e:
        fail(f"cannot reach the database ({str(e.orig).strip().splitlines()[0]}); is PostgreSQL running and "
             "the URL right?", EXIT_UNREACHABLE)
    return store


def store_call(fn, *args, fields: dict[str, str] | None = None, **kwargs):
    """Run a service's or the store's operation and turn its errors into operator messages
    (`fields`: see fail_error)."""
    from sqlalchemy.exc import OperationalError, ProgrammingError

    from esl_cb.domain.errors import EslCbError

    try:
        return fn(*args, **kwargs)
    except EslCbError as e:
        fail_error(e, fields)
    except ProgrammingError as e:
        if "does not exist" in str(e.orig):
            fail("the database has no esl-cb tables yet: run `esl-cb db upgrade` first", EXIT_FAILED)
        raise
    except OperationalError as e:
        fail(f"database error: {str(e.orig).strip().splitlines()[0]}", EXIT_UNREACHABLE)
