"""Test session set-up: gevent monkey-patching happens once, before anything imports sockets."""
from gevent import monkey

monkey.patch_all()

from psycogreen.gevent import patch_psycopg  # noqa: E402

patch_psycopg()

pytest_plugins = ["tests.fixtures"]
