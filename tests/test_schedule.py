"""A callback booked for later (Store.schedule_callback) gets what a script's Callback gets, in its
own transaction: the rate limits and the duplicate merge (one open callback per number and skill),
on PostgreSQL (advisory locks, several writers) and SQLite (the demo)."""
from __future__ import annotations

import time
from datetime import timedelta

import gevent
import pytest
from sqlalchemy import text

from esl_cb.db.migrate import upgrade
from esl_cb.db.store import PolicyRefused, RateLimited, Store, UnknownSkill, as_utc, utcnow
from esl_cb.domain.policy import RateLimits
from esl_cb.domain.queue import Priority

from .harness import TABLES


def _store(url: str) -> Store:
    st = Store(url, "test")
    if st.engine.dialect.name == "postgresql":
        with st.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    for skill in ("support", "sales", "billing", "vip"):
        st.add_skill(skill)
    return st


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request, tmp_path):
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'store.db'}"
        upgrade(url)
    st = _store(url)
    yield st
    st.close()


@pytest.fixture
def pg_store(pg_url):
    """Several writers at once and NOTIFY: PostgreSQL's (SQLite has one writer; its controllers poll)."""
    st = _store(pg_url)
    yield st
    st.close()


def _open(store: Store, number: str) -> list:
    with store.engine.connect() as conn:
        return conn.execute(text("SELECT id, skill_id, queued_at, priority_initial, callback_caller_id FROM contacts "
                                 "WHERE callback_number = :n AND state <> 'ended' ORDER BY id"), {"n": number}).all()


def test_a_second_booking_for_the_number_and_skill_joins_the_first(store):
    later = utcnow() + timedelta(hours=2)
    first = store.schedule_callback("+13125550100", "support", later, "+13125557000", 0, Priority(5, 0, 5))
    assert (first.merged_into, first.state) == (None, "callback_queued")
    second = store.schedule_callback("+13125550100", "support", later - timedelta(hours=1), None, 0,
                                     Priority(9, 0, 9), operator="olga")
    assert (second.contact_id, second.merged_into) == (first.contact_id, first.contact_id)
    [row] = _open(store, "+13125550100")
    # one open callback, at the earlier of the two places, with the higher priority; the caller ID
    # was not given again, so the first one's stays
    assert row.id == first.contact_id and row.priority_initial == 9 and row.callback_caller_id == "+13125557000"
    assert abs((as_utc(store.contact(row.id).queued_at) - (later - timedelta(hours=1))).total_seconds()) < 0.01
    assert store.audit_log()[0]["detail"].endswith(f"joined the open callback of contact {first.contact_id}")
    other_skill = store.schedule_callback("+13125550100", "sales", later, None)
    assert other_skill.merged_into is None and len(_open(store, "+13125550100")) == 2


def test_a_booking_joins_a_callback_a_caller_asked_for_and_the_other_way_round(store):
    cid = store.create_contact("call-1", "+13125550101", "3125557000", "t", "+13125550101", "3125557000")
    store.queue_contact(cid, "support", Priority(0, 0, 0))
    assert store.request_callback(cid, "+13125550101", "+13125557000", 5, "+13125557000", "+13125550101") == cid
    booked = store.schedule_callback("+13125550101", "support", None, None)
    assert booked.merged_into == cid and len(_open(store, "+13125550101")) == 1
    assert store.contact(cid).callback_caller_id == "+13125557000" and store.contact(cid).call_delay_sec == 5

    booked = store.schedule_callback("+13125550102", "support", None, "+13125557000")
    caller = store.create_contact("call-2", "+13125550102", "3125557000", "t", "+13125550102", "3125557000")
    store.queue_contact(caller, "support", Priority(0, 0, 0))
    assert store.request_callback(caller, "+13125550102", "+13125557000", 0, "+13125557000",
                                  "+13125550102") == booked.contact_id


def test_the_fourth_booking_for_a_number_in_a_day_is_refused(store):
    limits = RateLimits(per_number_per_day=3, per_caller_per_hour=0)
    for skill in ("support", "sales", "billing"):                  # three skills: none merges
        store.schedule_callback("+13125550103", skill, None, None, limits=limits)
    with pytest.raises(RateLimited) as refused:
        store.schedule_callback("+13125550103", "vip", None, None, limits=limits)
    assert refused.value.rule == "per_number" and refused.value.code == "rate_limited"
    assert "+13125550103 was asked to be called back 3 times" in str(refused.value)
    assert isinstance(refused.value, PolicyRefused)                 # what the guard catches
    assert len(_open(store, "+13125550103")) == 3
    [row] = store.refusals()
    assert (row["number"], row["stage"], row["rule"], row["contact_id"]) == ("+13125550103", "request",
                                                                           "per_number", None)
    # a booking that only joins the open callback makes no call and does not count
    assert store.schedule_callback("+13125550103", "support", None, None, limits=limits).merged_into is not None


def test_booking_never_creates_a_skill(store):
    with pytest.raises(UnknownSkill, match="no skill named 'nobody'"):
        store.schedule_callback("+13125550104", "nobody", None, None)
    assert "nobody" not in store.list_skills()


def test_the_window_and_data_are_stored(store):
    start, end = utcnow() + timedelta(hours=1), utcnow() + timedelta(hours=3)
    booked = store.schedule_callback("+13125550105", "support", start, None, expire_at=end,
                                     data={"ticket": "4711"}, override=True)
    c = store.contact(booked.contact_id)
    assert c.policy_override is True and c.not_before is not None and c.expire_at is not None
    assert abs((as_utc(c.expire_at) - end).total_seconds()) < 0.01
    assert '"ticket": "4711"' in c.callback_options and booked.expire_at == end


def test_bookings_at_once_for_one_number_make_one_callback(pg_store, pg_url):
    """Eight bookings at the same moment, through two stores (two API processes): one open
    callback, the others joined it; the advisory lock orders them."""
    store = pg_store
    other = Store(pg_url, "second")
    try:
        results = []

        def one(i: int) -> None:
            results.append((store if i % 2 else other).schedule_callback(
                "+13125550106", "support", None, None))          # no limits: the merge alone
        gevent.joinall([gevent.spawn(one, i) for i in range(8)], raise_error=True)
        assert len(_open(store, "+13125550106")) == 1
        assert sorted(r.merged_into is None for r in results) == [False] * 7 + [True]
    finally:
        other.close()


def test_the_booking_wakes_the_controllers_at_its_commit(pg_store, pg_url):
    import psycopg2

    store = pg_store
    listener = psycopg2.connect(pg_url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        listener.autocommit = True
        listener.cursor().execute(f"LISTEN {store.NOTIFY_CHANNEL}")
        booked = store.schedule_callback("+13125550107", "support", None, None)
        deadline = time.monotonic() + 5
        while not listener.notifies and time.monotonic() < deadline:
            gevent.sleep(0.01)
            listener.poll()
        assert [n.payload for n in listener.notifies] == [f"schedule {booked.contact_id}"]
    finally:
        listener.close()
