"""A booking in one statement on PostgreSQL (esl_cb_book, migration 0017): one round trip, the place
it reports is the one Queuestatus reads, and it says what the Python path says (tests/test_schedule.py
and tests/test_app.py run both dialects through the same assertions). And the claim without JIT."""
from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event, text

from esl_cb.app import CallbackService
from esl_cb.db.store import RateLimited, Store, UnknownSkill, utcnow
from esl_cb.domain.policy import RateLimits
from esl_cb.domain.queue import Priority

from .harness import TABLES


@pytest.fixture
def store(pg_url):
    st = Store(pg_url)
    with st.engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    st.add_skill("support")
    st.add_skill("sales")
    yield st
    st.close()


def statements(store: Store):
    """The statements sent to PostgreSQL while the block runs (BEGIN and COMMIT are not statements
    here: psycopg2 sends them itself, so an autocommit booking also shows that none was sent)."""
    sent: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        sent.append(statement)
    event.listen(store.engine, "before_cursor_execute", count)

    class Recorder:
        def __enter__(self):
            return sent

        def __exit__(self, *exc) -> None:
            event.remove(store.engine, "before_cursor_execute", count)
    return Recorder()


def test_a_booking_without_more_work_is_one_statement_in_its_own_transaction(store):
    with statements(store) as sent:
        done = store.schedule_callback("+13125550100", "support", None, None, operator="test")
    assert len(sent) == 1 and "esl_cb_book" in sent[0], sent
    assert (done.state, done.status["position"], done.merged_into) == ("callback_queued", 1, None)
    # The service adds the skill's time zone (the API keeps it a few seconds) and the place.
    booking = CallbackService(store, region="US").book_callback("+13125550101", "support")
    assert (booking.position, booking.status["being_served"]) == (2, False)
    # Stored as the Python path stores it, with its audit row.
    c = store.contact(done.contact_id)
    assert (c.callback_number, c.callback_caller_id, c.script, c.skill_id) == ("+13125550100", "+13125550100",
                                                                               "(scheduled)", 1)
    assert [(a["action"], a["target"]) for a in store.audit_log()] == [("callback schedule", f"contact {done.contact_id}")]
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' "
                                 "AND datname = current_database()")).scalar() == 0


def test_the_place_it_reports_is_the_one_queuestatus_reads(store):
    """Accelerating and fixed priorities, ties on the time queued: the function's count of those ahead
    is db/queue_status.py's, for each booking as it is made and for the whole queue afterwards."""
    now = utcnow()
    for i, (pi, pa, pm, ago) in enumerate([(0, 0, 0, 50), (5, 0, 5, 40), (0, 1, 20, 30), (3, 2, 9, 20),
                                           (5, 0, 5, 40), (0, 0.5, 4, 600), (10, 0, 10, 5)]):
        cid = store.create_contact(f"call-{i}", f"+1312555{i:04d}", "3125557000", "t", f"+1312555{i:04d}", "1")
        store.queue_contact(cid, "support", Priority(pi, pa, pm))
        with store.engine.begin() as conn:      # queued a while ago: the accelerating ones have risen
            conn.execute(text("UPDATE contacts SET queued_at = :t WHERE id = :id"),
                         {"t": now - timedelta(minutes=ago), "id": cid})
    made = []
    for n, priority in enumerate([None, Priority(5, 0, 5), Priority(12, 0, 12), Priority(4, 0, 4), None]):
        done = store.schedule_callback(f"+1312666{n:04d}", "support", None, None, priority=priority)
        assert done.placed and done.status["position"] == store.queue_status(done.contact_id)["position"], n
        made.append(done)
    # Each later booking moved those behind it: every place read again now agrees too.
    for d in made:
        assert store.queue_status(d.contact_id)["position"] >= d.status["position"]
    # Staffed and available as Queuestatus counts them.
    status = store.queue_status(made[-1].contact_id)
    assert (made[-1].status["agents_staffed"], made[-1].status["agents_available"]) == \
        (status["agents_staffed"], status["agents_available"])


def test_a_join_and_the_refusals_say_what_the_python_path_says(store):
    first = store.schedule_callback("+13125550100", "support", utcnow() + timedelta(hours=1), "+13125557000",
                                    delay=3, data={"ticket": "1"}, operator="test")
    second = store.schedule_callback("+13125550100", "support", None, None, priority=Priority(7, 0, 7),
                                     data={"ticket": "2"}, operator="test")
    assert (second.merged_into, second.contact_id, second.not_before) == (first.contact_id, first.contact_id,
                                                                          first.not_before)
    c = store.contact(first.contact_id)
    assert (c.priority_initial, c.call_delay_sec, c.callback_caller_id) == (7, 3, "+13125557000")
    assert '"ticket": "2"' in c.callback_options
    assert store.audit_log()[0]["detail"] == \
        f"+13125550100 on support: joined the open callback of contact {first.contact_id}"
    with pytest.raises(UnknownSkill):
        store.schedule_callback("+13125550100", "nowhere", None, None)
    limits = RateLimits(per_number_per_day=1, per_caller_per_hour=0)
    store.schedule_callback("+13125550199", "support", None, None, limits=limits)
    store.cancel(_open_id(store, "+13125550199"), "test")     # a cancelled one was asked for: it counts
    with pytest.raises(RateLimited) as refused:
        store.schedule_callback("+13125550199", "sales", None, None, limits=limits)
    assert (refused.value.rule, refused.value.where) == ("per_number", "number")
    assert refused.value.detail.startswith(
        "+13125550199 was asked to be called back 1 times in the last 24 hours (at most 1)")
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM policy_refusals")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM contacts WHERE callback_number = '+13125550199'")).scalar() == 1


def _open_id(store: Store, number: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(text("SELECT id FROM contacts WHERE callback_number = :n AND state <> 'ended'"),
                            {"n": number}).scalar()


def test_the_claim_the_completion_and_the_booking_run_without_jit(store):
    """With ~13,000 callbacks waiting, the claim's generic plan was costed above JIT's thresholds and
    compiled at every call: 1.3-1.5 s of CPU for 0.4 ms of work (migration 0017)."""
    with store.engine.connect() as conn:
        config = dict(conn.execute(text(
            "SELECT proname, proconfig FROM pg_proc WHERE proname IN ('esl_cb_claim', 'esl_cb_complete', "
            "'esl_cb_book')")).all())
    assert set(config) == {"esl_cb_claim", "esl_cb_complete", "esl_cb_book"}
    for name, settings in config.items():
        assert "jit=off" in (settings or []), (name, settings)
