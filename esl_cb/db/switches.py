"""Switches as data (issue 18): what an operator registers (`esl-cb switch ...`) and what each
controller reads at its heartbeat to take its share of its switch's limits."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, insert, select, true, update

from esl_cb.netaddr import switch_identity as identity

from .base import NotFound, StaleState, StoreBase, StoreError, utcnow
from .models import Agent, Contact, ControllerMember, LegToHangUp, PhoneRegistration, Switch

log = logging.getLogger(__name__)
STATES = ("up", "draining")
# Contacts whose legs may be up on a switch: a switch with any of them is not removed.
IN_THE_AIR = ("offered", "accepted", "dialling", "connected")


@dataclass(frozen=True)
class SwitchShare:
    """What one controller may use of its switch: its part of the switch's limits (None: no limit
    registered for it), how many live controllers share it, and whether it drains."""

    name: str | None
    controllers: int
    sessions_per_second: float | None
    voice_ports: int | None
    draining: bool


class SwitchesStore(StoreBase):
    def add_switch(self, name: str, esl: str, sessions_per_second: int | None = None, max_sessions: int | None = None,
                   voice_ports: int | None = None, operator: str | None = None) -> None:
        for what, value in (("sessions_per_second", sessions_per_second), ("max_sessions", max_sessions),
                            ("voice_ports", voice_ports)):
            if value is not None and value < 1:
                raise StoreError(f"switch {name}: {what} must be at least 1, not {value}", where=what)
        try:
            esl = identity(esl)
        except ValueError as e:
            raise StoreError(f"switch {name}: {e}", where="esl") from None
        with self.engine.begin() as conn:
            if conn.execute(select(Switch.name).where((Switch.name == name) | (Switch.esl == esl))).first():
                raise StaleState(f"a switch named {name!r} or at {esl} is registered already; remove it first",
                                 where="name")
            conn.execute(insert(Switch).values(name=name, esl=esl, sessions_per_second=sessions_per_second,
                                               max_sessions=max_sessions, voice_ports=voice_ports, state="up",
                                               created_at=utcnow()))
            self._audit(conn, operator, "switch add", f"switch {name}",
                        f"{esl} sps={sessions_per_second} max_sessions={max_sessions} ports={voice_ports}")
        log.info("switch %s at %s registered", name, esl)

    def switches(self) -> list[dict]:
        """Every switch with its live controllers (heartbeat within the last minute) and its calls."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(Switch.__table__).order_by(Switch.name)).all()
            members = conn.execute(select(ControllerMember.esl, func.count()).group_by(ControllerMember.esl)).all()
            calls = dict(conn.execute(select(ControllerMember.esl, func.count()).join(
                Contact, Contact.controller_id == ControllerMember.id).where(
                Contact.state.in_(IN_THE_AIR)).group_by(ControllerMember.esl)).all())
        per_esl = dict(members)
        return [{"name": r.name, "esl": r.esl, "state": r.state, "sessions_per_second": r.sessions_per_second,
                 "max_sessions": r.max_sessions, "voice_ports": r.voice_ports, "last_seen": r.last_seen,
                 "controllers": per_esl.get(r.esl, 0), "calls": calls.get(r.esl, 0)} for r in rows]

    def set_switch_state(self, name: str, state: str, operator: str | None = None) -> str:
        """up | draining; returns the state before."""
        if state not in STATES:
            raise StoreError(f"switch state must be one of {', '.join(STATES)}, not {state!r}", where="state")
        with self.engine.begin() as conn:
            before = conn.execute(select(Switch.state).where(Switch.name == name).with_for_update()).scalar()
            if before is None:
                raise NotFound(f"no switch named {name!r} (esl-cb switch list)", where="name")
            conn.execute(update(Switch).where(Switch.name == name).values(state=state))
            self._audit(conn, operator, f"switch {state}", f"switch {name}", f"{before} -> {state}")
            self._notify(conn, f"switch {name} {state}")
        log.info("switch %s %s -> %s", name, before, state)
        return before

    def remove_switch(self, name: str, operator: str | None = None) -> None:
        """Only a switch with no call of ours in the air (drain it first)."""
        with self.engine.begin() as conn:
            row = conn.execute(select(Switch.__table__).where(Switch.name == name).with_for_update()).first()
            if row is None:
                raise NotFound(f"no switch named {name!r} (esl-cb switch list)", where="name")
            busy = conn.execute(select(func.count()).select_from(Contact).join(
                ControllerMember, ControllerMember.id == Contact.controller_id).where(
                ControllerMember.esl == row.esl, Contact.state.in_(IN_THE_AIR))).scalar()
            if busy:
                raise StaleState(f"switch {name} has {busy} call(s) in the air; drain it (esl-cb switch drain {name}) "
                                 "and remove it once they ended", where="name")
            conn.execute(delete(Switch).where(Switch.name == name))
            # What only that switch could act on goes with it: its phones' registrations (else an agent
            # registered there alone would look registered, and no controller may claim them: 0016)
            # and the hang-ups owed there.
            conn.execute(delete(PhoneRegistration).where(PhoneRegistration.switch == row.esl))
            conn.execute(delete(LegToHangUp).where(LegToHangUp.switch == row.esl))
            self._derive(conn, true())
            self._audit(conn, operator, "switch remove", f"switch {name}", row.esl)

    def switch_share(self, esl: str, seen: bool) -> SwitchShare:
        """At a controller's heartbeat: its switch's limits divided among the controllers beating for it
        (itself included), whether it drains; and, `seen`, that it reached the switch now."""
        esl = identity(esl)
        with self.engine.begin() as conn:
            if seen:
                conn.execute(update(Switch).where(Switch.esl == esl).values(last_seen=func.now()))
            row = conn.execute(select(Switch.__table__).where(Switch.esl == esl)).first()
            live = conn.execute(select(func.count()).select_from(ControllerMember).where(
                ControllerMember.esl == esl, ControllerMember.heartbeat_at > _ago(conn, 60))).scalar()
        n = max(int(live or 0), 1)
        if row is None:
            return SwitchShare(None, n, None, None, False)
        return SwitchShare(row.name, n, _rate_share(row.sessions_per_second, n),
                           max(row.voice_ports // n, 1) if row.voice_ports else None, row.state == "draining")

    # -- legs owed a hang-up (migration 0014) ------------------------------------------------------
    def owe_hangup(self, switch: str, uuid: str, cause: str) -> None:
        """`uuid` on `switch` must be hung up once that switch can be asked (kept across restarts)."""
        with self.engine.begin() as conn:
            if conn.execute(select(LegToHangUp.uuid).where(LegToHangUp.uuid == uuid)).first() is None:
                conn.execute(insert(LegToHangUp).values(uuid=uuid, switch=identity(switch), cause=cause,
                                                        since=utcnow()))

    def hangups_owed(self, switch: str) -> dict[str, str]:
        """The legs owed a hang-up on `switch`: uuid -> cause."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(LegToHangUp.uuid, LegToHangUp.cause)
                                .where(LegToHangUp.switch == identity(switch))).all()
        return {r.uuid: r.cause for r in rows}

    def hangup_paid(self, uuid: str) -> None:
        """The switch hung it up, or has no such leg any more."""
        with self.engine.begin() as conn:
            conn.execute(delete(LegToHangUp).where(LegToHangUp.uuid == uuid))



    def offering_controllers(self, timeout: float) -> list[str]:
        """The controllers that may offer now: a heartbeat within `timeout` seconds (the database's clock),
        on a switch that is not draining and that a controller reached within `timeout` (a controller
        whose switch is cut or dead beats on, but offers nothing); a switch not registered: its
        controllers' heartbeats decide. Each picks from them the one that claims first for a NOTIFY
        (controller/wakeups.py)."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(ControllerMember.id).outerjoin(
                Switch, Switch.esl == ControllerMember.esl).where(
                ControllerMember.heartbeat_at > _ago(conn, timeout),
                (Switch.state.is_(None)) | ((Switch.state != "draining") & (Switch.last_seen > _ago(conn, timeout))))
                .order_by(ControllerMember.id)).scalars())

    def phone_reach(self) -> dict[str, set[str]]:
        """Agent name -> the live controllers (a heartbeat within 60 s) whose switch has a registration of
        the agent's phone (migration 0016's rule for the claim)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(Agent.name, ControllerMember.id).join(
                PhoneRegistration, (PhoneRegistration.reg_user == Agent.phone_user)
                & (Agent.phone_domain.is_(None) | (PhoneRegistration.realm == Agent.phone_domain))).join(
                ControllerMember, ControllerMember.esl == PhoneRegistration.switch).where(
                Agent.phone_user.is_not(None), ControllerMember.heartbeat_at > _ago(conn, 60))).all()
        reach: dict[str, set[str]] = {}
        for name, controller in rows:
            reach.setdefault(name, set()).add(controller)
        return reach


def _rate_share(sps: int | None, controllers: int) -> float | None:
    """One controller's originates a second, so that all of them together stay under the switch's
    sessions-per-second in any calendar second, which is what FreeSWITCH counts (it lets sps - 1
    through, measured): each may send its pacer's burst (max(2, rate / 5), pacing.py) plus its rate in
    one second."""
    if not sps:
        return None
    budget = (sps - 1) / controllers
    return max(budget - max(2.0, budget / 6), 0.5)


def _ago(conn, seconds: float) -> datetime:
    """A cutoff on the database's clock (heartbeats are written with it)."""
    if conn.dialect.name == "sqlite":
        return utcnow() - timedelta(seconds=seconds)
    return func.now() - func.make_interval(0, 0, 0, 0, 0, 0, seconds)
