"""Agents' phones (migration 0013): registrations as the switches report them, and PINs.

A row of phone_registrations says a directory user has at least one registration on a switch; the
claim (esl_cb_claim, claim_queue) offers an agent whose phone is tracked only while such a row
exists. Each write wakes the controllers: an agent whose phone came back may take the next contact.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, exists, or_, select, update

from esl_cb.netaddr import switch_identity as identity
from .base import NotFound, StoreBase, as_utc, utcnow
from .models import Agent, PhoneRegistration

log = logging.getLogger(__name__)
R = PhoneRegistration.__table__
A = Agent.__table__


def _matches(user: str, domain: str):
    """Agents whose phone is this user (any domain when theirs names none)."""
    if not domain:
        return A.c.phone_user == user
    return and_(A.c.phone_user == user, or_(A.c.phone_domain.is_(None), A.c.phone_domain == domain))


def _registered():
    return exists().where(R.c.reg_user == A.c.phone_user,
                          or_(A.c.phone_domain.is_(None), R.c.realm == A.c.phone_domain))


class PhonesStore(StoreBase):
    # -- registrations ------------------------------------------------------------
    def phone_registered(self, switch: str, user: str, domain: str, contact: str) -> list[str]:
        """`user` has a registration on `switch`. Returns the agents it makes offerable again."""
        switch = identity(switch)          # one spelling per switch, as its controllers and shares
        with self.engine.begin() as conn:
            found = conn.execute(select(R.c.id).where(R.c.switch == switch, R.c.reg_user == user,
                                                      R.c.realm == domain)).first()
            if found is None:
                conn.execute(R.insert().values(switch=switch[:255], reg_user=user[:64], realm=domain[:128],
                                               contact=contact[:1000], registered_at=utcnow()))
            back, _ = self._derive(conn, _matches(user, domain))
        return back

    def phone_gone(self, switch: str, user: str, domain: str) -> list[str]:
        """`switch` has no registration of `user` left (the switch said so). Returns the agents no longer
        offered because of it: those no switch has a registration of."""
        switch = identity(switch)          # one spelling per switch, as its controllers and shares
        with self.engine.begin() as conn:
            q = delete(R).where(R.c.switch == switch, R.c.reg_user == user)
            if domain:
                q = q.where(R.c.realm == domain)
            conn.execute(q)
            _, gone = self._derive(conn, _matches(user, domain))
        return gone

    def phones_checked(self, switch: str, found: dict[tuple[str, str], str | None]) -> tuple[list[str], list[str]]:
        """What the switch said of each phone asked at a (re)connection: (user, domain) -> its contact, or
        None when it has no registration. Returns (agents offerable again, agents no longer offered)."""
        switch = identity(switch)          # one spelling per switch, as its controllers and shares
        back: list[str] = []
        gone: list[str] = []
        with self.engine.begin() as conn:
            now = utcnow()
            for (user, domain), contact in found.items():
                rows = delete(R).where(R.c.switch == switch, R.c.reg_user == user, R.c.realm == domain)
                conn.execute(rows)
                if contact is not None:
                    conn.execute(R.insert().values(switch=switch[:255], reg_user=user[:64], realm=domain[:128],
                                                   contact=contact[:1000], registered_at=now))
                b, g = self._derive(conn, _matches(user, domain))
                back += b
                gone += g
        return sorted(set(back)), sorted(set(gone))

    def _derive(self, conn, which) -> tuple[list[str], list[str]]:
        """agents.phone_unregistered_since of the agents `which` selects, from the registrations now
        stored; wakes the controllers when one becomes offerable. Returns (back, gone)."""
        rows = conn.execute(select(A.c.id, A.c.name, A.c.phone_unregistered_since, _registered().label("reg"))
                            .where(which, A.c.phone_user.is_not(None))).all()
        back = [r for r in rows if r.reg and r.phone_unregistered_since is not None]
        gone = [r for r in rows if not r.reg and r.phone_unregistered_since is None]
        if back:
            conn.execute(update(Agent).where(Agent.id.in_([r.id for r in back])).values(phone_unregistered_since=None))
            self._notify(conn, "phones")
        if gone:
            conn.execute(update(Agent).where(Agent.id.in_([r.id for r in gone])).values(
                phone_unregistered_since=utcnow()))
        return [r.name for r in back], [r.name for r in gone]

    def tracked_phones(self) -> dict[tuple[str, str | None], list[str]]:
        """(user, domain or None) -> the agents whose phone it is."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(A.c.name, A.c.phone_user, A.c.phone_domain)
                                .where(A.c.phone_user.is_not(None))).all()
        out: dict[tuple[str, str | None], list[str]] = {}
        for r in rows:
            out.setdefault((r.phone_user, r.phone_domain), []).append(r.name)
        return out

    def unregistered_agents(self) -> dict[str, datetime]:
        """Agents whose phone has no registration (not offered: "phone not registered"), and since when."""
        with self.engine.connect() as conn:
            return {r.name: as_utc(r.phone_unregistered_since) for r in conn.execute(
                select(A.c.name, A.c.phone_unregistered_since).where(A.c.phone_unregistered_since.is_not(None))
                .order_by(A.c.name))}

    # -- PINs and logins from the phone ---------------------------------------------
    def set_pin(self, name: str, pin_hash: str, login_number: str, operator: str | None = None) -> None:
        with self.engine.begin() as conn:
            row = conn.execute(select(A.c.id).where(A.c.name == name)).first()
            if row is None:
                raise NotFound(f"no agent named {name!r}")
            taken = conn.execute(select(A.c.name).where(A.c.login_number == login_number, A.c.id != row.id)).first()
            if taken is not None:
                raise NotFound(f"login number {login_number} is agent {taken.name}'s; pick another (--number)")
            conn.execute(update(Agent).where(Agent.id == row.id).values(
                pin_hash=pin_hash, login_number=login_number, pin_failures=0, pin_locked_until=None))
            self._audit(conn, operator, "agent pin", name, f"login number {login_number}")

    def login_record(self, login_number: str):
        """(name, pin_hash, locked_until) of the agent with this login number, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(A.c.name, A.c.pin_hash, A.c.pin_locked_until)
                               .where(A.c.login_number == login_number)).first()
        return None if row is None else (row.name, row.pin_hash, as_utc(row.pin_locked_until))

    def agent_of_phone(self, user: str) -> str | None:
        """The agent whose phone is this directory user (a trusted caller ID), or None."""
        with self.engine.connect() as conn:
            names = list(conn.execute(select(A.c.name).where(A.c.phone_user == user)).scalars())
        return names[0] if len(names) == 1 else None

    def pin_failed(self, name: str, caller: str, lock_after: int, lock_for: float) -> datetime | None:
        """A wrong PIN for `name`: counted, audited; past `lock_after` in a row the login number is locked
        for `lock_for` seconds. Returns the lock's end when this locked it."""
        with self.engine.begin() as conn:
            failures = conn.execute(update(Agent).where(Agent.name == name).values(
                pin_failures=Agent.pin_failures + 1).returning(Agent.pin_failures)).scalar() or 0
            until = None
            if failures >= lock_after:
                until = utcnow() + timedelta(seconds=lock_for)
                conn.execute(update(Agent).where(Agent.name == name).values(pin_locked_until=until, pin_failures=0))
            self._audit(conn, f"phone {caller}"[:64], "agent pin wrong", name,
                        f"{failures} in a row" + (f"; locked until {until:%H:%M:%S} UTC" if until else ""))
        return until

    def pin_ok(self, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(Agent).where(Agent.name == name).values(pin_failures=0))
