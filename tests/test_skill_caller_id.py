"""Each skill's outbound caller ID (issue 19): the number a booked callback without a caller ID
shows, and the one a script's Callback shows when its CallerID is no dialable number (the shipped
example's {DNIS} when the call came in on an extension such as 5000)."""
from __future__ import annotations

import pytest

from esl_cb.app import CallbackService
from esl_cb.app.changes import CallerIds
from esl_cb.db.store import Store
from esl_cb.domain import script as scripts
from esl_cb.domain.errors import EslCbError
from esl_cb.domain.runtime import ScriptRunner

from .harness import Harness

CALLBACK_ONLY = """
name: cb
actions:
  - action: Begin
    Default: Callback
  - action: Callback
    PhoneNumber: "{ANI}"
    CallerID: "{DNIS}"
    CallDelaySec: 3
    Default: Hangup
    OnError: Failed
  - action: Assign
    Caption: Failed
    Variable: failed
    Value: "yes"
    Default: Hangup
  - action: Hangup
"""


class Queue:
    def __init__(self, caller_id: str | None) -> None:
        self.caller_id = caller_id
        self.stored: list[tuple] = []

    def reqagent(self, skill, priority) -> None: ...

    def status(self) -> dict:
        return {}

    def callback(self, number, caller_id, delay, ani, dnis, options=None) -> None:
        self.stored.append((number, caller_id, ani, dnis))

    def outbound_caller_id(self) -> str | None:
        return self.caller_id


class Call:
    def play(self, prompt, max_seconds) -> None: ...
    def menu(self, prompt, timeout, keys): return None
    def capture(self, *args): return ""
    def hangup(self) -> None: ...


def run(queue: Queue, dnis: str):
    return ScriptRunner(scripts.parse(CALLBACK_ONLY, "cb.yaml"), Call(), queue,
                        {"ANI": "3125550100", "DNIS": dnis}).run()


def test_a_callerid_that_is_an_extension_gives_way_to_the_skills_number():
    queue = Queue("+13125557000")
    result = run(queue, "5000")
    assert queue.stored == [("+13125550100", "+13125557000", "+13125557000", "+13125550100")]
    assert result.ended_by == "hangup" and "failed" not in result.variables


def test_without_a_skill_number_the_callback_takes_onerror_as_before():
    queue = Queue(None)
    result = run(queue, "5000")
    assert queue.stored == [] and result.variables["failed"] == "yes"
    assert "'5000' has the wrong number of digits" in result.variables["_ERR"]
    assert "no outbound caller ID (esl-cb skill caller-id SKILL NUMBER)" in result.variables["_ERR"]


def test_a_dialable_callerid_is_kept():
    queue = Queue("+13125557000")
    run(queue, "3125559999")
    assert queue.stored[0][1] == "+13125559999"


@pytest.fixture
def h(pg_url):
    s = scripts.load(scripts.DEFAULT_SCRIPT)
    s.actions["Hold music"].props["MaxDurationSec"] = 2
    harness = Harness(pg_url, s)
    yield harness
    harness.close()


def test_the_shipped_example_on_extension_5000_books_the_callback_with_the_skills_number(h):
    h.store.add_skill("support")
    assert CallerIds(h.store).set("support", "312-555-7000", operator="olga") == "+13125557000"
    h.call("3125550100", "5000", "dtmf 1 4.0")
    queued = h.wait_state("callback_queued")
    assert (queued.callback_number, queued.callback_caller_id) == ("+13125550100", "+13125557000")
    assert (queued.ani, queued.original_dnis) == ("+13125557000", "5000")


def test_a_booking_without_a_caller_id_shows_the_skills_number(pg_url):
    store = Store(pg_url)
    try:
        ids = CallerIds(store)
        with pytest.raises(EslCbError) as e:
            ids.set("nobody", "+13125557000")
        assert e.value.code == "unknown_skill"
        store.add_skill("sales")
        with pytest.raises(EslCbError) as e:
            ids.set("sales", "5000")
        assert (e.value.code, e.value.where) == ("invalid_number", "caller_id")
        assert ids.for_booking("sales", "") == ""                  # none set: the number itself is shown
        ids.set("sales", "+13125557001", operator="olga")
        assert ids.for_booking("sales", "+13125550000") == "+13125550000"
        booking = CallbackService(store).book_callback("+13125550199", "sales", ids.for_booking("sales", ""))
        assert store.contact(booking.id).callback_caller_id == "+13125557001"
        assert store.audit_log()[0]["action"] == "skill caller id"
    finally:
        store.close()
