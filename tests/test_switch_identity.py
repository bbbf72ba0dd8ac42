"""A switch is one switch however its ESL address is spelled (issue 18): `127.0.0.1:8021` and
`localhost:8021` used to be two switches, each with its own share of the limits, and a controller
of one could not adopt the other's contacts."""
from __future__ import annotations

import pytest

from esl_cb.db.base import StoreError
from esl_cb.db.store import Store
from esl_cb.netaddr import switch_identity

from .harness import TABLES


@pytest.mark.parametrize("spelling, same", [
    ("127.0.0.1:8021", "127.0.0.1:8021"), ("localhost:8021", "127.0.0.1:8021"), (" LocalHost:8021", "127.0.0.1:8021"),
    ("127.0.0.1", "127.0.0.1:8021"), ("[::1]:8021", "[::1]:8021"), ("[0:0::1]:8021", "[::1]:8021"),
    ("FS-A.example.org.:8021", "fs-a.example.org:8021"), ("10.0.0.011:8021", None)])
def test_one_spelling_per_switch(spelling, same):
    if same is None:            # a leading zero is not an address: kept as a name, not guessed at
        assert switch_identity(spelling) == "10.0.0.011:8021"
        return
    assert switch_identity(spelling) == same


def test_localhost_and_127_0_0_1_are_one_switch_for_its_row_its_share_and_its_controllers(pg_url):
    from sqlalchemy import text
    cli = Store(pg_url, "")
    with cli.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    a, b = Store(pg_url, "ctl-a"), Store(pg_url, "ctl-b")
    try:
        cli.add_switch("fs-a", "localhost:8021", sessions_per_second=20)
        with pytest.raises(StoreError):
            cli.add_switch("fs-a2", "127.0.0.1:8021")          # the same switch, registered already
        with pytest.raises(StoreError) as bad:
            cli.add_switch("fs-x", "127.0.0.1:port")
        assert bad.value.where == "esl"
        a.register("127.0.0.1:8021")
        b.register("LOCALHOST:8021")
        share = a.switch_share("127.0.0.1:8021", seen=True)
        assert share.name == "fs-a" and share.controllers == 2   # both count against its sessions-per-second
        [row] = cli.switches()
        assert row["esl"] == "127.0.0.1:8021" and row["controllers"] == 2
    finally:
        for s in (cli, a, b):
            s.close()


def test_a_phones_registrations_are_the_switchs_however_its_controller_spells_it(pg_url):
    """A registration stored by a controller started with `localhost:8021` is the one a controller of
    `127.0.0.1:8021` deletes when the switch says the phone is gone (reviewer's finding: the old row
    stayed, and the agent counted as registered for good)."""
    from sqlalchemy import text
    store = Store(pg_url, "")
    try:
        with store.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
        store.add_agent("pat", "user/2001", ["support"])
        store.phone_registered("localhost:8021", "2001", "127.0.0.1", "sip:2001@127.0.0.1:5070")
        assert store.agent("pat").phone_unregistered_since is None
        assert store.phone_gone("127.0.0.1:8021", "2001", "127.0.0.1") == ["pat"]
        assert store.agent("pat").phone_unregistered_since is not None
    finally:
        store.close()
