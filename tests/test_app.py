"""The application services (esl_cb/app/): bookings, cancels, agents' states and skills' hours,
each refusal a domain error with its stable code and the field it is about; on PostgreSQL and on
SQLite (the demo and a single controller run on it)."""
from __future__ import annotations

from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from esl_cb.app import MAX_DATA_BYTES, AgentService, CallbackService, SkillService, Window
from esl_cb.db.migrate import upgrade
from esl_cb.db.store import Store, as_utc, utcnow
from esl_cb.domain.errors import DatabaseUnavailable, EslCbError, SchemaMissing
from esl_cb.domain.policy import DestinationPolicy, RateLimits
from esl_cb.domain.queue import Priority
from esl_cb.domain.states import AgentState

from .harness import TABLES


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request, tmp_path):
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
    else:
        url = f"sqlite:///{tmp_path / 'store.db'}"
        upgrade(url)
    st = Store(url, "test")
    if request.param == "postgresql":
        with st.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    for skill in ("support", "sales", "billing", "vip"):
        st.add_skill(skill)
    yield st
    st.close()


@pytest.fixture
def callbacks(store) -> CallbackService:
    return CallbackService(store, DestinationPolicy(limits=RateLimits(per_number_per_day=3, per_caller_per_hour=0)))


def refused(call, code: str, where: str | None = None) -> EslCbError:
    with pytest.raises(EslCbError) as e:
        call()
    assert e.value.code == code, e.value
    if where is not None:
        assert e.value.where == where
    return e.value


def open_callbacks(store: Store) -> list:
    with store.engine.connect() as conn:
        return conn.execute(text("SELECT id, callback_number, skill_id FROM contacts WHERE state <> 'ended' "
                                 "ORDER BY id")).all()


def test_booking_a_good_number(store, callbacks):
    at = datetime.combine((utcnow() + timedelta(days=30)).date(), time(14, 30))      # naive: the skill's zone
    store.set_skill_hours("support", tz="Europe/Amsterdam")
    booking = callbacks.book_callback("312-555-0100", "support", "312 555 7000", priority=5, not_before=at,
                                      delay=3, data={"ticket": "4711"}, operator="olga")
    assert (booking.id, booking.state, booking.number, booking.merged_into, booking.position, booking.override) == \
        (1, "callback_queued", "+13125550100", None, 1, False)
    assert booking.not_before == at.replace(tzinfo=ZoneInfo("Europe/Amsterdam")).astimezone(timezone.utc)
    c = store.contact(1)
    assert (c.callback_number, c.callback_caller_id, c.call_delay_sec, c.priority_initial, c.priority_max) == \
        ("+13125550100", "+13125557000", 3, 5, 5)
    assert as_utc(c.not_before) == booking.not_before and '"ticket": "4711"' in c.callback_options
    [entry] = store.audit_log()
    assert (entry["operator"], entry["action"], entry["target"]) == ("olga", "callback schedule", "contact 1")
    plain = callbacks.book_callback("+13125550101", "sales")          # no time: as soon as an agent is free
    assert plain.not_before is None and store.contact(plain.id).callback_caller_id == "+13125550101"


def test_a_bad_number_gets_a_clear_error_with_its_code(store, callbacks):
    e = refused(lambda: callbacks.book_callback("312 555 0100 ext 12", "support"), "invalid_number", "number")
    assert str(e) == "number: '312 555 0100 ext 12' has an extension; a callback never dials an extension"
    assert e.http_status == 422 and isinstance(e, ValueError)
    refused(lambda: callbacks.book_callback("+13125550100", "support", "abc"), "invalid_number", "caller_id")
    refused(lambda: callbacks.book_callback("", "support"), "invalid_number", "number")
    assert open_callbacks(store) == []


def test_an_unknown_skill_is_an_error_and_is_not_created(store, callbacks):
    e = refused(lambda: callbacks.book_callback("+13125550100", "nobody"), "unknown_skill", "skill")
    assert "no skill named 'nobody' (esl-cb skill add nobody)" in str(e)
    assert "nobody" not in store.list_skills() and open_callbacks(store) == []


def test_a_refused_destination_is_recorded_and_an_override_lets_it_through(store, callbacks):
    e = refused(lambda: callbacks.book_callback("+19005550100", "support"), "policy_refused", "number")
    assert "+19005550100 may not be called back: a premium-rate number" in str(e) and e.rule == "type"
    [row] = store.refusals()
    assert (row["number"], row["stage"], row["rule"], row["contact_id"]) == ("+19005550100", "request", "type", None)
    assert open_callbacks(store) == []

    assert callbacks.allow_number("1 900 555 0100", "ticket 4711", None, "olga") == "+19005550100"
    booking = callbacks.book_callback("+19005550100", "support")
    assert booking.override and store.contact(booking.id).policy_override is True   # the dial's check honours it
    assert callbacks.policy.check("+19005550100", override=store.contact(booking.id).policy_override).allowed
    callbacks.remove_override("+19005550100", "olga")
    refused(lambda: callbacks.remove_override("+19005550100", "olga"), "not_found", "number")
    refused(lambda: callbacks.allow_number("+19005550100", " ", None, "olga"), "invalid_input", "reason")


def test_the_fourth_booking_for_a_number_in_a_day_is_rate_limited(store, callbacks):
    for skill in ("support", "sales", "billing"):
        assert not callbacks.book_callback("+13125550102", skill).merged
    e = refused(lambda: callbacks.book_callback("+13125550102", "vip"), "rate_limited", "number")
    assert e.http_status == 429 and "asked to be called back 3 times in the last 24 hours" in str(e)
    assert [r["rule"] for r in store.refusals()] == ["per_number"]
    assert len(open_callbacks(store)) == 3
    # a cancelled callback was requested all the same: it counts
    callbacks.cancel_callback(1, "customer called back")
    refused(lambda: callbacks.book_callback("+13125550102", "vip"), "rate_limited")


def test_a_second_booking_for_the_number_and_skill_joins_the_first(store, callbacks):
    first = callbacks.book_callback("+13125550103", "support", priority=1)
    other = callbacks.book_callback("+13125550109", "support")                       # queued in between
    second = callbacks.book_callback("+13125550103", "support", "+13125557000", priority=7, not_before="+3600",
                                     operator="olga")
    assert (second.id, second.merged_into, second.merged, second.state) == (first.id, first.id, True,
                                                                            "callback_queued")
    assert second.not_before is None                          # the first one's time stays, and its place
    assert [(r.id, r.callback_number) for r in open_callbacks(store)] == [(first.id, "+13125550103"),
                                                                          (other.id, "+13125550109")]
    c = store.contact(first.id)
    assert (c.priority_initial, c.callback_caller_id) == (7, "+13125557000")
    assert as_utc(c.queued_at) < as_utc(store.contact(other.id).queued_at)       # the earliest place
    assert "joined the open callback of contact 1" in store.audit_log()[0]["detail"]


def test_the_window_sets_the_time_and_the_expiry(store, callbacks):
    tomorrow = (utcnow() + timedelta(days=1)).date()
    w = Window(f"{tomorrow}T14:00", f"{tomorrow}T16:00", "America/Chicago")
    booking = callbacks.book_callback("+13125550104", "support", window=w)
    chicago = ZoneInfo("America/Chicago")
    assert booking.not_before == datetime.combine(tomorrow, time(14), chicago).astimezone(timezone.utc)
    assert booking.expire_at == datetime.combine(tomorrow, time(16), chicago).astimezone(timezone.utc)
    c = store.contact(booking.id)
    assert as_utc(c.expire_at) == booking.expire_at
    refused(lambda: callbacks.book_callback("+13125550105", "support", window=Window("+7200", "+3600")),
            "invalid_input", "window.end")
    refused(lambda: callbacks.book_callback("+13125550105", "support", window=Window("+1", "+2", "Mars/Olympus")),
            "invalid_input", "window.tz")
    refused(lambda: callbacks.book_callback("+13125550105", "support", not_before="+60", window=w),
            "invalid_input", "window")
    refused(lambda: callbacks.book_callback("+13125550105", "support", window=w, expire_after=60),
            "invalid_input", "expire_after")
    refused(lambda: callbacks.book_callback("+13125550105", "support", window=Window("2000-01-01T10:00",
                                                                                    "2000-01-01T11:00")),
            "invalid_input", "window.end")


def test_bad_fields_are_named(store, callbacks):
    book = callbacks.book_callback
    refused(lambda: book("+13125550106", "support", not_before="tomorrow"), "invalid_input", "not_before")
    refused(lambda: book("+13125550106", "support", not_before="+99999999"), "invalid_input", "not_before")
    refused(lambda: book("+13125550106", "support", delay=60), "invalid_input", "delay")
    refused(lambda: book("+13125550106", "support", priority=float("nan")), "invalid_input", "priority")
    refused(lambda: book("+13125550106", "support", expire_after=-1), "invalid_input", "expire_after")
    refused(lambda: book("+13125550106", "support", data=["a"]), "invalid_input", "data")
    e = refused(lambda: book("+13125550106", "support", data={"note": "x" * MAX_DATA_BYTES}), "invalid_input",
                "data")
    assert f"at most {MAX_DATA_BYTES}" in str(e)
    assert open_callbacks(store) == []


def _dialling(store: Store, cid: int) -> None:
    # Through the legal states only (the database refuses any other change, migration 0007).
    with store.engine.begin() as conn:
        for state in ("offered", "accepted", "dialling"):       # the legal path (the database holds to it)
            conn.execute(text("UPDATE contacts SET state = :s WHERE id = :id"), {"s": state, "id": cid})


def test_cancel_a_queued_callback_and_not_one_being_dialled(store, callbacks):
    queued = callbacks.book_callback("+13125550107", "support")
    done = callbacks.cancel_callback(queued.id, "customer called back", operator="olga")
    assert (done.id, done.was) == (queued.id, "callback_queued")
    c = store.contact(queued.id)
    assert (c.state, c.outcome) == ("ended", "cancelled")
    assert store.audit_log()[0]["action"] == "callback cancel"
    e = refused(lambda: callbacks.cancel_callback(queued.id), "wrong_state")
    assert "already ended (cancelled)" in str(e) and e.http_status == 409

    dialled = callbacks.book_callback("+13125550108", "support")
    _dialling(store, dialled.id)
    e = refused(lambda: callbacks.cancel_callback(dialled.id), "wrong_state")
    assert "cannot be cancelled now: it is being dialled" in str(e)
    assert store.contact(dialled.id).state == "dialling"
    refused(lambda: callbacks.cancel_callback(99), "not_found")
    refused(lambda: callbacks.cancel_callback(dialled.id, ""), "invalid_input", "reason")


def test_agent_state_changes(store):
    agents = AgentService(store)
    store.add_agent("alice", "user/1001", ["support"])
    assert agents.set_agent_state("alice", "login", "olga").before == "LoggedOut"
    change = agents.set_agent_state("alice", "available", "olga")
    assert (change.name, change.before, change.after) == ("alice", "Unavailable", "Available")
    e = refused(lambda: agents.set_agent_state("alice", "available"), "wrong_state")
    assert str(e) == "agent 'alice' is already Available"
    refused(lambda: agents.set_agent_state("alice", "login"), "wrong_state")          # only from LoggedOut
    refused(lambda: agents.set_agent_state("nobody", "available"), "not_found")
    refused(lambda: agents.set_agent_state("alice", "lunch"), "invalid_input", "state")
    refused(lambda: agents.set_agent_state("alice", "break"), "invalid_input", "reason")      # a break needs one
    store.set_agent_state("alice", AgentState.ON_CALL, list(AgentState))
    e = refused(lambda: agents.set_agent_state("alice", "login"), "wrong_state")
    assert "is OnCall; it cannot go to Unavailable now" in str(e)
    # A logout asked during a call waits for its end (issue 20): the call is not cut.
    change = agents.set_agent_state("alice", "logout", "olga")
    assert change.when_call_ends and store.agent("alice").state == "OnCall"
    assert store.agent("alice").pending_state == "LoggedOut"
    assert [a["action"] for a in store.audit_log()] == ["agent state", "agent state", "agent state"]


def test_skill_hours(store):
    skills = SkillService(store)
    hours = skills.set_hours("support", week="mon-fri 08:00-18:00", tz="Europe/Amsterdam", operator="olga")
    assert hours.tz == "Europe/Amsterdam"
    refused(lambda: skills.set_hours("support", tz="Mars/Olympus"), "invalid_hours")
    refused(lambda: skills.set_hours("nobody", week="24/7"), "not_found")


def test_a_database_down_or_empty_is_a_domain_error(tmp_path):
    down = CallbackService(Store("postgresql+psycopg2://postgres@127.0.0.1:1/none"))
    with pytest.raises(DatabaseUnavailable) as e:
        down.book_callback("+13125550100", "support")
    assert e.value.code == "database_unavailable" and e.value.http_status == 503
    empty = CallbackService(Store(f"sqlite:///{tmp_path / 'empty.db'}"))
    with pytest.raises(SchemaMissing, match="esl-cb db upgrade"):
        empty.book_callback("+13125550100", "support")


def test_priority_of_a_script_callback_is_kept_by_a_booking_without_one(store, callbacks):
    cid = store.create_contact("call-1", "+13125550110", "3125557000", "t", "+13125550110", "3125557000")
    store.queue_contact(cid, "support", Priority(40, 1, 80))
    store.request_callback(cid, "+13125550110", "+13125557000", 5, "+13125557000", "+13125550110")
    booking = callbacks.book_callback("+13125550110", "support")
    c = store.contact(cid)
    assert booking.id == cid and (c.priority_initial, c.priority_max, c.call_delay_sec,
                                  c.callback_caller_id) == (40, 80, 5, "+13125557000")
