"""The store's dispatch: queue order, the longest-idle agent, and two hangups of one conversation.

PostgreSQL claims through the functions of migration 0003; SQLite (the demo) through SQLAlchemy.
Both must give the answers of the domain's order_key.
"""
from __future__ import annotations

import random
from datetime import timedelta

import gevent
import psycopg2
import pytest
from sqlalchemy import text

from esl_cb.db.migrate import upgrade
from esl_cb.db.store import Store, utcnow
from esl_cb.domain.queue import Priority, order_key
from esl_cb.domain.states import AgentState

from .fixtures import DIALECTS, PG_ADMIN, create_database, drop_database, migrated_store, wait_until


@pytest.fixture(params=DIALECTS)
def store(request, tmp_path):
    with migrated_store(request.param, tmp_path) as st:
        yield st


def _queue(store: Store, i: int, priority: Priority, waited_min: float, skill: str = "support") -> int:
    cid = store.create_contact(f"call-{i}", f"+1312555{i:04d}", "3125557000", "t", f"+1312555{i:04d}", "3125557000")
    store.queue_contact(cid, skill, priority)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE contacts SET queued_at = :t WHERE id = :id"),
                     {"t": utcnow() - timedelta(minutes=waited_min), "id": cid})
    return cid


def _available(store: Store, name: str) -> None:
    store.set_agent_state(name, AgentState.AVAILABLE, list(AgentState))


def _in_conversation_with_one_waiting(store: Store) -> tuple[int, int]:
    """alice talks to the first contact (live) while a second one waits."""
    store.add_agent("alice", "user/1001", ["support"])
    first = _queue(store, 1, Priority(10, 0, 10), 2)
    second = _queue(store, 2, Priority(10, 0, 10), 1)
    _available(store, "alice")
    offer = store.claim_offer("leg-1")
    assert offer.contact_id == first and store.accept_live(offer)
    return first, second


def test_claims_follow_the_domain_queue_order(store):
    rnd = random.Random(7)
    queued = {}
    for i in range(14):
        p = Priority(rnd.choice([0, 5, 10, 20]), rnd.choice([0, 0, 0.5, 2, 3]), rnd.choice([0, 15, 30, 60]))
        waited = rnd.uniform(0, 30)
        queued[_queue(store, i, p, waited)] = (p, utcnow() - timedelta(minutes=waited))
    now = utcnow()
    expected = sorted(queued, key=lambda cid: order_key(queued[cid][0], queued[cid][1], now, cid))
    store.add_agent("alice", "user/1001", ["support"])
    _available(store, "alice")
    claimed = []
    for _ in queued:
        offer = store.claim_offer(f"leg-{len(claimed)}")
        claimed.append(offer.contact_id)
        store.cancel(offer.contact_id, "test: next one", force=True)     # frees alice for the next claim
    assert claimed == expected
    assert store.agents()[0]["state"] == "Available"
    assert store.claim_offer("leg-none") is None


def test_longest_idle_agent_with_the_skill_gets_the_contact(store):
    for name in ("first", "second", "third"):
        store.add_agent(name, f"user/{name}", ["support"])
    store.add_agent("other-skill", "user/x", ["sales"])
    _available(store, "other-skill")
    for name in ("second", "first", "third"):            # 'second' has been idle longest
        _available(store, name)
        gevent.sleep(0.01)
    cid = _queue(store, 1, Priority(10, 0, 10), 1)
    offer = store.claim_offer("leg-1")
    assert (offer.contact_id, offer.agent_name) == (cid, "second")
    row = {a["name"]: a for a in store.agents()}
    assert row["second"]["state"] == "Offered" and row["first"]["state"] == "Available"


def test_complete_frees_the_agent_and_claims_the_next_contact_at_once(store):
    first, second = _in_conversation_with_one_waiting(store)
    done, nxt = store.complete(first, "caller hung up", claim_leg_uuid="leg-2")
    assert done and (nxt.contact_id, nxt.agent_name, nxt.agent_leg_uuid) == (second, "alice", "leg-2")
    c = store.contact(first)
    assert (c.state, c.outcome) == ("ended", "handled")
    assert store.contact(second).state == "offered"
    # A second hangup of the same conversation changes nothing.
    assert store.complete(first, "the other leg hung up", claim_leg_uuid="leg-3") == (False, None)
    assert store.agents()[0]["state"] == "Offered"


def test_two_hangups_of_one_conversation_race_and_only_one_acts(pg_url):
    """The agent's and the customer's hangup reach two greenlets at once. The loser must neither
    free the agent the winner just offered the next contact, nor claim anything."""
    store = Store(pg_url, "race")
    first, second = _in_conversation_with_one_waiting(store)

    db = pg_url.rsplit("/", 1)[1]
    holder = psycopg2.connect(PG_ADMIN.rsplit("/", 1)[0] + "/" + db)
    cur = holder.cursor()
    cur.execute("SELECT id FROM agents WHERE name = 'alice' FOR UPDATE")    # both completions queue up
    results = {}

    def hangup(leg: str) -> None:
        results[leg] = store.complete(first, f"hangup seen on {leg}", claim_leg_uuid=leg)

    workers = [gevent.spawn(hangup, "leg-a"), gevent.spawn(hangup, "leg-b")]

    def both_blocked() -> bool:
        with store.engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = :d AND "
                                     "wait_event_type = 'Lock'"), {"d": db}).scalar() >= 2
    wait_until(both_blocked, what="both completions to wait on the locks")
    holder.commit()
    holder.close()
    gevent.joinall(workers, timeout=10, raise_error=True)

    winners = [leg for leg, (done, _) in results.items() if done]
    assert len(winners) == 1, results
    leg = winners[0]
    other = "leg-b" if leg == "leg-a" else "leg-a"
    assert results[other] == (False, None)
    assert results[leg][1].contact_id == second
    with store.engine.connect() as conn:
        alice = conn.execute(text("SELECT state, contact_id, leg_uuid FROM agents")).one()
    assert tuple(alice) == ("Offered", second, leg)
    store.close()


def test_an_operators_agent_state_change_is_checked_stored_and_audited(store):
    """PostgreSQL does it in one statement (with the audit row and the NOTIFY), SQLite in a transaction:
    the same answers either way."""
    from esl_cb.db.base import NotFound, StoreError
    store.add_agent("ann", "user/7001", ["support"])
    with pytest.raises(NotFound, match="no agent named 'nobody'"):
        store.set_agent_state("nobody", AgentState.AVAILABLE, [AgentState.LOGGED_OUT])
    with pytest.raises(StoreError, match="agent 'ann' is LoggedOut; it cannot go to Available now"):
        store.set_agent_state("ann", AgentState.AVAILABLE, [AgentState.UNAVAILABLE])
    assert store.agent("ann").state == "LoggedOut" and store.audit_log() == []       # nothing changed
    assert store.set_agent_state("ann", AgentState.AVAILABLE, [AgentState.LOGGED_OUT], operator="dave") \
        == AgentState.LOGGED_OUT
    ann = store.agent("ann")
    assert ann.state == "Available" and ann.available_since is not None
    with pytest.raises(StoreError, match="agent 'ann' is already Available"):
        store.set_agent_state("ann", AgentState.AVAILABLE, list(AgentState), operator="dave")
    assert store.set_agent_state("ann", AgentState.UNAVAILABLE, list(AgentState)) == AgentState.AVAILABLE
    assert store.agent("ann").available_since == ann.available_since               # kept when not made available
    log = store.audit_log()
    assert [(e["operator"], e["action"], e["target"], e["detail"]) for e in log] == [
        ("dave", "agent state", "ann", "LoggedOut -> Available")]                     # no operator: not audited


def test_a_claim_takes_the_next_pair_when_another_claim_holds_the_best():
    """claim_queue (migration 0007) locks the pair it hands out on PostgreSQL and skips pairs another
    claim holds: the claimer neither waits nor comes back empty."""
    url = create_database()
    upgrade(url)
    store = Store(url, "test")
    holder = psycopg2.connect(url.replace("+psycopg2", ""))
    try:
        for name in ("xavier", "yvonne"):                     # xavier idle longest
            store.add_agent(name, f"user/{name}", ["support"])
            _available(store, name)
            gevent.sleep(0.01)
        first, second = _queue(store, 1, Priority(10, 0, 10), 2), _queue(store, 2, Priority(10, 0, 10), 1)
        with holder.cursor() as cur:
            cur.execute("SELECT contact_id, agent_name FROM claim_queue LIMIT 1")   # another claim, not committed
            assert cur.fetchone() == (first, "xavier")
            with gevent.Timeout(5, AssertionError("the claim waited for the locked pair")):
                offer = store.claim_offer("leg-2")
        assert (offer.contact_id, offer.agent_name) == (second, "yvonne")
        holder.rollback()
        offer = store.claim_offer("leg-1")
        assert (offer.contact_id, offer.agent_name) == (first, "xavier")
    finally:
        holder.close()
        store.close()
        drop_database(url)
