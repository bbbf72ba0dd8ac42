"""Fencing (issue 17, item 4), on the database: controllers register (an epoch), beat, and adopt the
dead as far as their own switch can answer for them; a controller taken over while it stalled finds
every move it tries on what it held refused, like a lost race, and learns it at its next heartbeat.

Two Store objects with different controller ids share one database, as two controllers do."""
from __future__ import annotations

import logging
import sys
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text

from esl_cb.db.base import Fenced, StaleState, StoreError
from esl_cb.db.migrate import upgrade
from esl_cb.db.store import Store, as_utc, utcnow
from esl_cb.domain.queue import Priority
from esl_cb.domain.states import AgentState
from esl_cb.domain.states import ContactState as C
from esl_cb.domain.states import Outcome

from .fixtures import create_database, drop_database

FS1, FS2 = "10.0.0.1:8021", "10.0.0.2:8021"


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request, tmp_path):
    url = create_database() if request.param == "postgresql" else f"sqlite:///{tmp_path / 'fencing.db'}"
    upgrade(url)
    yield url
    if request.param == "postgresql":
        drop_database(url)


@pytest.fixture
def stores(url):
    made = {}

    def store(controller_id: str) -> Store:
        made[controller_id] = Store(url, controller_id)
        return made[controller_id]
    yield store
    for s in made.values():
        s.close()


def _stall(store: Store, controller_id: str) -> None:
    """What a controller stalled past the timeout looks like to the others; and `store`, the adopter,
    beat all along (adopt_dead judges only once its own beats went through a whole timeout)."""
    clock = [0.0]
    store.clock = lambda: clock[0]
    with store.engine.connect() as conn:
        esl = conn.execute(text("SELECT esl FROM controllers WHERE id = :id"), {"id": store.controller_id}).scalar()
    for _ in range(40):
        store.heartbeat(esl)
        clock[0] += 1.0
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE controllers SET heartbeat_at = :t WHERE id = :id"),
                     {"t": utcnow() - timedelta(hours=1), "id": controller_id})


def _snapshot(store: Store) -> dict:
    with store.engine.connect() as conn:
        return {t: sorted(tuple(r) for r in conn.execute(text(f"SELECT * FROM {t}")).all())
                for t in ("contacts", "agents", "callback_attempts", "legs", "controllers")}


class Seed:
    """Contacts of one controller in every state a move starts from, each with its own skill and agent
    (so each claim pairs exactly the contact and agent meant)."""

    def __init__(self, store: Store, first: int = 0) -> None:
        self.store, self.n = store, first

    def contact(self, callback: bool = False, queue: bool = True) -> int:
        self.n += 1
        number = f"+1312555{self.n:04d}"
        cid = self.store.create_contact(f"call-{self.n}", number, "3125557000", "t", number, "3125557000")
        if queue:
            self.store.queue_contact(cid, f"skill-{self.n}", Priority(10, 0, 10))
        if callback:
            self.store.request_callback(cid, number, "+13125557000", 5, "+13125557000", number)
        return cid

    def offer(self, callback: bool = True):
        cid = self.contact(callback)
        self.store.add_agent(f"agent-{self.n}", f"user/{1000 + self.n}", [f"skill-{self.n}"])
        self.store.set_agent_state(f"agent-{self.n}", AgentState.AVAILABLE, list(AgentState))
        offer = self.store.claim_offer(f"agent-leg-{self.n}")
        assert offer.contact_id == cid
        return offer

    def accepted(self):
        offer = self.offer()
        _, plan = self.store.accept_and_prepare(offer, 5, None, f"customer-leg-{self.n}")
        return offer, plan

    def dialling(self):
        offer, plan = self.accepted()
        assert self.store.mark_dialling(plan)
        return plan

    def connected(self):
        plan = self.dialling()
        assert self.store.dial_answered(plan.contact_id, plan.leg_uuid)
        return plan


def test_a_stalled_controller_taken_over_moves_nothing_it_held(stores, caplog):
    a, b = stores("ctl-a"), stores("ctl-b")
    a.register(FS1)
    b.register(FS1)
    seed = Seed(a)
    offered, offered_live = seed.offer(), seed.offer(callback=False)
    accepted_offer, accepted = seed.accepted()
    unprepared = seed.offer()
    assert a.accept_callback(unprepared, 5) is not None               # accepted, its dial not prepared yet
    dialling, connected, live = seed.dialling(), seed.connected(), seed.offer(callback=False)
    assert a.accept_live(live)
    arrived, queued = seed.contact(queue=False), seed.contact()
    held = {o.contact_id for o in (offered, offered_live, accepted_offer, unprepared, live)} | {
        dialling.contact_id, connected.contact_id, arrived, queued}

    _stall(b, "ctl-a")
    assert b.adopt_dead(30, FS1) == ["ctl-a"]
    before = _snapshot(a)
    with a.engine.connect() as conn:
        assert set(conn.execute(text("SELECT controller_id FROM contacts")).scalars()) == {"ctl-b"}
        assert set(conn.execute(text("SELECT controller_id FROM agents")).scalars()) == {"ctl-b"}

    caplog.set_level(logging.WARNING, logger="esl_cb.db")
    assert a.accept_and_prepare(offered, 5, None, "new-leg") is None
    assert a.accept_callback(offered, 5) is None
    a.offer_failed(offered, refused=True, reason="declined")
    a.refuse_accepted(offered, "CallDelaySec 60 >= 60", 300)
    assert a.accept_live(offered_live) is False
    assert a.abandon_offer(offered_live.contact_id, "caller hung up") is None
    assert a.prepared_plan(accepted.contact_id) is None
    assert a.mark_dialling(accepted) is False
    assert a.refuse_dial(accepted, "country", "not now") is False
    assert a.agent_left_before_dial(accepted.contact_id, "agent hung up") is False
    assert a.prepare_dial(unprepared.contact_id, "another-leg") is None
    assert a.dial_answered(dialling.contact_id, dialling.leg_uuid) is False
    assert a.dial_failed(dialling.contact_id, dialling.leg_uuid, "no_answer", 60, 3) is None
    assert a.dial_failed(connected.contact_id, connected.leg_uuid, "hangup", 60, 3, answered=True) is None
    assert a.bridge_failed(connected.contact_id, connected.leg_uuid, "agent gone") is False
    assert a.complete(connected.contact_id, "agent hung up") == (False, None)
    assert a.complete(live.contact_id, "caller hung up", claim_leg_uuid="next-leg") == (False, None)
    assert a.end_contact(arrived, [C.ARRIVED], Outcome.NOT_QUEUED, "script ended") is False
    assert a.end_contact(queued, [C.QUEUED], Outcome.ABANDONED, "caller hung up") is False
    with pytest.raises(StaleState):
        a.queue_contact(arrived, "skill-x", Priority())
    with pytest.raises(StaleState):
        a.request_callback(queued, "+13125550000", "+13125557000", 5, "+13125557000", "+13125550000")
    assert _snapshot(a) == before

    warned = [r for r in caplog.records if "belongs to controller ctl-b, not to ctl-a" in r.getMessage()]
    assert sorted(int(r.getMessage().split()[1]) for r in warned) == sorted(held)        # once per contact

    with pytest.raises(Fenced, match="ctl-a .* was taken over"):
        a.heartbeat(FS1)
    with a.engine.connect() as conn:        # not re-inserted
        assert conn.execute(text("SELECT count(*) FROM controllers WHERE id = 'ctl-a'")).scalar() == 0
    # The adopter carries on with them.
    assert b.mark_dialling(accepted) and b.complete(connected.contact_id, "agent hung up") == (True, None)
    assert b.dial_answered(dialling.contact_id, dialling.leg_uuid)


def test_register_heartbeat_and_epochs(stores):
    a, b = stores("ctl-a"), stores("ctl-b")
    with pytest.raises(StoreError, match="heartbeat before register"):
        a.heartbeat(FS1)
    with pytest.raises(StoreError, match="no controller_id"):
        stores("").register(FS1)
    first = a.register(FS1)
    assert a.epoch == first
    a.heartbeat(FS1)
    second = b.register(FS1)
    again = a.register(FS1)                 # a fresh membership replaces the row
    assert first < second < again
    a.heartbeat(FS1)
    with a.engine.connect() as conn:
        assert conn.execute(text("SELECT epoch FROM controllers WHERE id = 'ctl-a'")).scalar() == again
    # Taken over, then back: an epoch above every other, never the old one again (the adopter's row
    # holds a lower one, so max + 1 alone would give ours back).
    _stall(b, "ctl-a")
    assert b.adopt_dead(30, FS1) == ["ctl-a"]
    with pytest.raises(Fenced):
        a.heartbeat(FS1)
    back = a.register(FS1)
    assert back > again
    a.heartbeat(FS1)


def test_adopted_by_another_switch_only_the_waiting_callbacks_then_the_rest_by_its_own(stores, caplog):
    a, b, c = stores("ctl-a"), stores("ctl-b"), stores("ctl-c")
    for store, esl in ((a, FS1), (b, FS1), (c, FS2)):
        store.register(esl)
    seed = Seed(a)
    waiting = [seed.contact(callback=True), seed.contact(callback=True)]
    live, offered = seed.contact(), seed.offer()
    _stall(c, "ctl-a")

    caplog.set_level(logging.WARNING, logger="esl_cb.db")
    assert c.adopt_dead(30, FS2) == ["ctl-a"]
    owners = {cid: c.contact(cid).controller_id for cid in waiting + [live, offered.contact_id]}
    assert owners == {waiting[0]: "ctl-c", waiting[1]: "ctl-c", live: "ctl-a", offered.contact_id: "ctl-a"}
    left = [r.getMessage() for r in caplog.records if "leaves it its 2 contacts with a leg" in r.getMessage()]
    assert len(left) == 1 and FS1 in left[0] and FS2 in left[0]
    assert c.agent("agent-4").controller_id == "ctl-a"                    # its agent is on its switch's call
    assert c.adopt_dead(30, FS2) == []                                    # nothing new, said once
    assert len([r for r in caplog.records if "leaves it" in r.getMessage()]) == 1

    # Still a member (its row kept): it may carry on with what it has, not with what was taken.
    a.heartbeat(FS1)
    assert a.end_contact(waiting[0], [C.CALLBACK_QUEUED], Outcome.CANCELLED, "test") is False
    _stall(b, "ctl-a")
    assert b.adopt_dead(30, FS1) == ["ctl-a"]                             # a later adopter on its switch
    assert {b.contact(cid).controller_id for cid in (live, offered.contact_id)} == {"ctl-b"}
    assert b.agent("agent-4").controller_id == "ctl-b"
    with pytest.raises(Fenced):
        a.heartbeat(FS1)


def test_the_heartbeat_and_the_cutoff_read_the_databases_clock(stores, monkeypatch):
    """a's host clock is a day behind, b's a day ahead: a is alive, and b does not take it over."""
    a, b = stores("ctl-a"), stores("ctl-b")

    def host_clock(offset: timedelta) -> None:
        for name, module in list(sys.modules.items()):
            if name.startswith("esl_cb.db") and hasattr(module, "utcnow"):
                monkeypatch.setattr(module, "utcnow", lambda: datetime.now(timezone.utc) + offset)
    host_clock(timedelta(days=-1))
    a.register(FS1)
    a.heartbeat(FS1)
    host_clock(timedelta(days=1))
    b.register(FS1)
    assert b.adopt_dead(30, FS1) == []
    with a.engine.connect() as conn:
        beat = conn.execute(text("SELECT heartbeat_at FROM controllers WHERE id = 'ctl-a'")).scalar()
    beat = as_utc(datetime.fromisoformat(beat) if isinstance(beat, str) else beat)
    assert abs(beat - datetime.now(timezone.utc)) < timedelta(minutes=1)


def test_a_live_caller_is_offered_only_by_the_controller_that_holds_the_call(stores):
    """Its call is on that controller's socket and switch: another controller could not bridge it, and
    the caller's own controller must still be able to end it. A callback is anyone's."""
    a, b = stores("ctl-a"), stores("ctl-b")
    live = Seed(a).contact()
    b.add_agent("ann", "user/1001", ["skill-1", "skill-2"])
    b.set_agent_state("ann", AgentState.AVAILABLE, list(AgentState))
    assert b.claim_offer("leg-b") is None
    offer = a.claim_offer("leg-a")
    assert (offer.contact_id, offer.agent_name) == (live, "ann")
    assert a.abandon_offer(live, "caller hung up") == offer.agent_id
    callback = Seed(a, first=1).contact(callback=True)        # skill-2
    offer = b.claim_offer("leg-b2")
    assert offer.contact_id == callback and b.contact(callback).controller_id == "ctl-b"
