"""Where the caller stands (issue 14): numbers said with stock files, the EWT formula, the Queuestatus
action, the store's read on PostgreSQL and SQLite, and a script that branches on position and wait
end to end on the simulator."""
from __future__ import annotations

import random
from datetime import timedelta

import pytest
from sqlalchemy import text

from esl_cb.db.store import NotFound, StaleState, Store, as_utc, utcnow
from esl_cb.domain import script as scripts
from esl_cb.domain.ewt import DEFAULT_AHT_SEC, NO_AGENT_EWT_SEC, estimate_wait, recent_aht
from esl_cb.domain.queue import Priority, order_key
from esl_cb.domain.runtime import ActionFailed, ScriptRunner
from esl_cb.domain.speech import all_number_files, minutes_sounds, number_files, number_sounds, wait_minutes
from esl_cb.domain.states import AgentState
from esl_cb.esl.inbound import InboundConnection

from .fixtures import DIALECTS, migrated_store, wait_until
from .harness import Harness


# -- numbers, as mod_say_en says them ------------------------------------------------------------
@pytest.mark.parametrize("n,said", [
    (0, "0"), (1, "1"), (9, "9"), (10, "10"), (13, "13"), (19, "19"), (20, "20"), (21, "20 1"), (99, "90 9"),
    (100, "1 hundred"), (101, "1 hundred 1"), (110, "1 hundred 10"), (115, "1 hundred 15"),
    (240, "2 hundred 40"), (1000, "1 thousand"), (1005, "1 thousand 5"), (12345, "12 thousand 3 hundred 40 5"),
    (100_000, "1 hundred thousand"), (2_000_019, "2 million 19"),
    (999_999_999, "9 hundred 90 9 million 9 hundred 90 9 thousand 9 hundred 90 9"),
])
def test_numbers_are_said_like_mod_say_en(n, said):
    assert " ".join(f[len("digits/"):-len(".wav")] for f in number_files(n)) == said
    assert number_sounds(n) == "!".join(number_files(n))


def test_every_number_uses_only_the_stock_files():
    stock = set(all_number_files())
    rnd = random.Random(3)
    for n in list(range(2000)) + [rnd.randrange(10 ** 9) for _ in range(2000)]:
        assert set(number_files(n)) <= stock, n
    assert number_sounds(23) == "digits/20.wav!digits/3.wav"


@pytest.mark.parametrize("bad,error", [(-1, ValueError), (10 ** 9, ValueError), (2.5, TypeError), (True, TypeError)])
def test_numbers_out_of_range(bad, error):
    with pytest.raises(error):
        number_files(bad)


@pytest.mark.parametrize("seconds,minutes,sounds", [
    (0, 1, "digits/1.wav!time/minute.wav"), (59, 1, "digits/1.wav!time/minute.wav"),
    (60, 1, "digits/1.wav!time/minute.wav"), (61, 2, "digits/2.wav!time/minutes.wav"),
    (1260, 21, "digits/20.wav!digits/1.wav!time/minutes.wav"), (3600, 60, "digits/60.wav!time/minutes.wav"),
])
def test_waits_are_said_in_whole_minutes_rounded_up(seconds, minutes, sounds):
    assert wait_minutes(seconds) == minutes and minutes_sounds(seconds) == sounds


# -- the estimate -------------------------------------------------------------------------------
@pytest.mark.parametrize("position,staffed,available,aht,ewt", [
    (1, 1, 0, 180, 180),          # one agent busy: on average one call's time
    (2, 1, 0, 180, 360),
    (3, 3, 0, 120, 120),          # three agents free one every 40 s: the third waits 120 s
    (10, 4, 0, 300, 750),
    (1, 2, 1, 180, 0),            # an agent is free: offered now
    (3, 4, 2, 200, 50),           # two go to the free agents; the third waits for one release of four
    (4, 3, 0, None, 240),         # no recent handle time: DEFAULT_AHT_SEC (180)
    (1, 1, 0, 0, 180),            # a zero average is no data either
    (1, 3, 0, 100, 34),           # whole seconds, rounded up
    (5, 0, 0, 180, NO_AGENT_EWT_SEC),
    (1, 0, 0, None, NO_AGENT_EWT_SEC),
])
def test_ewt_formula(position, staffed, available, aht, ewt):
    assert estimate_wait(position, staffed, available, aht) == ewt


def test_ewt_rejects_a_position_below_one_and_aht_falls_back():
    with pytest.raises(ValueError):
        estimate_wait(0, 1, 0, 100)
    assert recent_aht([]) == DEFAULT_AHT_SEC and recent_aht([100, 200]) == 150


# -- the Queuestatus action -----------------------------------------------------------------------
STATUS_SCRIPT = """
name: status
actions:
  - action: Begin
    Default: Status
  - action: Queuestatus
    Caption: Status
    Default: Done
    OnError: Failed
  - action: Hangup
    Caption: Done
  - action: Hangup
    Caption: Failed
"""


class NoCall:
    def hangup(self) -> None:
        pass


class Queue:
    def __init__(self, status=None, error: str = "") -> None:
        self._status, self.error = status, error

    def status(self) -> dict:
        if self.error:
            raise ActionFailed(self.error)
        return dict(self._status)


def run_status(queue: Queue) -> dict:
    runner = ScriptRunner(scripts.parse(STATUS_SCRIPT), NoCall(), queue, {"ANI": "1", "DNIS": "2"})
    return runner.run().variables


def test_queuestatus_sets_the_variables_and_their_sounds():
    v = run_status(Queue({"position": 23, "agents_staffed": 4, "agents_available": 0, "aht_sec": 150.4}))
    assert {k: v[k] for k in scripts.QUEUE_STATUS_VARIABLES} == {
        "Position": "23", "PositionSounds": "digits/20.wav!digits/3.wav", "EWTSec": "865", "EWTMinutes": "15",
        "EWTMinutesSounds": "digits/15.wav!time/minutes.wav", "AgentsAvailable": "0", "AgentsStaffed": "4",
        "AHTSec": "150", "InHours": "1"}
    assert v["_ERR"] == ""


def test_queuestatus_defaults_and_the_opening_hours_hook():
    v = run_status(Queue({"position": 1, "agents_staffed": 0, "agents_available": 0, "aht_sec": None}))
    assert (v["EWTSec"], v["AHTSec"], v["EWTMinutes"]) == ("3600", "180", "60")
    served = {"position": 1, "agents_staffed": 2, "agents_available": 0, "aht_sec": 300, "being_served": True}
    assert run_status(Queue(served))["EWTSec"] == "0"                  # an agent has it: no wait
    assert run_status(Queue({**served, "being_served": False}))["EWTSec"] == "150"
    closed = {"position": 1, "agents_staffed": 1, "agents_available": 1, "aht_sec": None, "in_hours": False}
    assert run_status(Queue(closed))["InHours"] == "0"
    assert run_status(Queue({**closed, "in_hours": True}))["InHours"] == "1"


@pytest.mark.parametrize("queue,err", [
    (Queue(error="contact 7 is arrived, not in a queue: Queuestatus needs a queued contact (run Reqagent first)"),
     "contact 7 is arrived, not in a queue: Queuestatus needs a queued contact (run Reqagent first)"),
    (Queue({"position": 1}), "queue status incomplete: KeyError('agents_staffed')"),
    (Queue({"position": 0, "agents_staffed": 1, "agents_available": 0, "aht_sec": None}),
     "queue status gave position 0"),
])
def test_queuestatus_errors_take_on_error(queue, err):
    v = run_status(queue)
    assert v["_ERR"] == err and "Position" not in v


# -- the store's read ------------------------------------------------------------------------------
@pytest.fixture(params=DIALECTS)
def store(request, tmp_path):
    with migrated_store(request.param, tmp_path) as st:
        yield st


def _queue(store: Store, i: int, priority: Priority, waited_min: float, skill: str = "support") -> int:
    cid = store.create_contact(f"call-{i}", f"+1312555{i:04d}", "3125557000", "t", f"+1312555{i:04d}", "3125557000")
    store.queue_contact(cid, skill, priority)
    _set(store, cid, queued_at=utcnow() - timedelta(minutes=waited_min))
    return cid


def _set(store: Store, cid: int, **values) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE contacts SET " + ", ".join(f"{k} = :{k}" for k in values) + " WHERE id = :id"),
                     {**values, "id": cid})


def test_positions_follow_the_queue_order_of_claims(store):
    rnd = random.Random(11)
    mine = []
    for i in range(16):
        p = Priority(rnd.choice([0, 5, 10, 20]), rnd.choice([0, 0, 0.5, 2]), rnd.choice([0, 15, 30, 60]))
        mine.append(_queue(store, i, p, rnd.uniform(0, 30)))
    others = [_queue(store, 100 + i, Priority(99, 0, 99), 40, skill="sales") for i in range(3)]
    for cid in mine[::4]:
        _set(store, cid, state="callback_queued", callback_requested=True)      # callbacks keep their place
    now = utcnow()
    rows = {cid: store.contact(cid) for cid in mine}
    expected = sorted(mine, key=lambda c: order_key(Priority(rows[c].priority_initial, rows[c].priority_acceleration,
                                                             rows[c].priority_max), as_utc(rows[c].queued_at), now, c))
    positions = {cid: store.queue_status(cid, now)["position"] for cid in mine}
    assert sorted(mine, key=positions.get) == expected
    assert sorted(positions.values()) == list(range(1, 17))
    assert [store.queue_status(c, now)["position"] for c in others] == [1, 2, 3]     # its own skill's queue
    store.add_agent("alice", "user/1001", ["support"])
    store.set_agent_state("alice", AgentState.AVAILABLE, list(AgentState))
    claimed = []
    for n in range(len(mine)):
        offer = store.claim_offer(f"leg-{n}")
        status = store.queue_status(offer.contact_id)                       # offered: an agent has it
        assert (status["position"], status["being_served"]) == (1, True)
        claimed.append(offer.contact_id)
        store.cancel(offer.contact_id, "test: next one", force=True)
    assert claimed == expected


def test_agents_and_recent_handle_time(store):
    cid = _queue(store, 1, Priority(), 1)
    status = store.queue_status(cid)
    assert status == {"position": 1, "being_served": False, "agents_staffed": 0, "agents_available": 0,
                      "aht_sec": None, "aht_samples": 0, "state": "queued", "in_hours": True}
    for name, state in (("a", "Available"), ("b", "OnCall"), ("c", "Offered"), ("d", "Refused"), ("e", "LoggedOut"),
                        ("f", "Unavailable"), ("g", "Available")):
        store.add_agent(name, f"user/{name}", ["support"])
        if state != "LoggedOut":
            store.set_agent_state(name, AgentState(state), list(AgentState))
    store.add_agent("other", "user/other", ["sales"])
    store.set_agent_state("other", AgentState.AVAILABLE, list(AgentState))
    with store.engine.begin() as conn:        # g was refused by a full switch: not offered for a while
        conn.execute(text("UPDATE agents SET offer_not_before = :t WHERE name = 'g'"),
                     {"t": utcnow() + timedelta(seconds=30)})
    now = utcnow()
    # Handle times: from the offer to the end; only handled or completed callbacks of the last hour.
    for i, (talk, outcome, ended_ago, skill) in enumerate([
            (100, "handled", 60, "support"), (200, "callback_completed", 600, "support"),
            (900, "abandoned", 60, "support"), (1000, "handled", 4000, "support"), (50, "handled", 60, "sales")]):
        done = _queue(store, 10 + i, Priority(), 30, skill=skill)
        ended = now - timedelta(seconds=ended_ago)
        _set(store, done, state="ended", outcome=outcome, offered_at=ended - timedelta(seconds=talk), ended_at=ended)
    assert store.queue_status(cid, now)["aht_samples"] == 0          # the store keeps it for a minute...
    status = store.queue_status(cid, now, aht_max_age=0)             # ...unless told otherwise
    assert (status["agents_staffed"], status["agents_available"]) == (4, 1)     # a, b, c, g; only a
    assert status["aht_samples"] == 2 and status["aht_sec"] == pytest.approx(150, abs=0.01)
    # Issue 20: an agent in WrapUp is at work (staffed, not available), and the skill's wrap-up time is
    # part of the time an agent is tied up by a contact.
    store.add_agent("h", "user/h", ["support"])
    store.set_agent_state("h", AgentState.WRAP_UP, list(AgentState))
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE skills SET wrap_up_sec = 30 WHERE name = 'support'"))
    status = store.queue_status(cid, now, aht_max_age=0)
    assert (status["agents_staffed"], status["agents_available"]) == (5, 1)
    assert status["aht_sec"] == pytest.approx(180, abs=0.01)


def test_only_a_queued_contact_has_a_status(store):
    cid = store.create_contact("call-x", "+13125550100", "3125557000", "t", "+13125550100", "3125557000")
    with pytest.raises(StaleState, match=f"contact {cid} is arrived, not in a queue: Queuestatus needs a queued "
                                         r"contact \(run Reqagent first\)"):
        store.queue_status(cid)
    with pytest.raises(NotFound):
        store.queue_status(999)
    store.queue_contact(cid, "support", Priority())
    for state in ("offered", "connected", "ended"):  # the agent answered as the script ran on; then gone
        _set(store, cid, state=state)
        if state != "ended":
            assert store.queue_status(cid)["being_served"] is True
        else:
            with pytest.raises(StaleState, match="is ended, not in a queue"):
                store.queue_status(cid)


# -- end to end on the simulator --------------------------------------------------------------------
FLOW = """
name: where-you-stand
actions:
  - action: Begin
    Default: Queue
  - action: Reqagent
    Caption: Queue
    Skill: support
    Default: Status
  - action: Queuestatus
    Caption: Status
    Default: Position
  - action: Play
    Caption: Position
    Prompt: file_string://ivr/ivr-you_are_number.wav!{PositionSounds}!ivr/ivr-in_line.wav
    Default: Long wait
  - action: If
    Caption: Long wait
    Condition: "{EWTSec} > 200 and {Position} >= 2"
    "True": Estimated wait
    Default: Music
  - action: Play
    Caption: Estimated wait
    Prompt: file_string://ivr/ivr-estimated_hold_time.wav!{EWTMinutesSounds}
    Default: Music
  - action: Play
    Caption: Music
    Prompt: local_stream://moh
    MaxDurationSec: 30
    Default: Status
"""


def test_two_callers_the_second_hears_position_two_and_its_wait(pg_url):
    h = Harness(pg_url, scripts.parse(FLOW, "flow.yaml"))
    executes: list[tuple[str, str, str]] = []
    esl = InboundConnection("127.0.0.1", h.sim.port, "ClueCon", lambda ev: executes.append(
        (ev.get("Unique-ID"), ev.get("Application"), ev.get("Application-Data"))))
    try:
        esl.connect(["CHANNEL_EXECUTE"])
        h.agent("alice", "1001")
        h.store.set_agent_state("alice", AgentState.ON_CALL, list(AgentState))   # staffed, busy elsewhere
        first = h.call("3125550101", plan="hangup 6")
        h.wait_state("queued", 1)
        second = h.call("3125550102", plan="hangup 6")
        h.wait_state("queued", 2)

        def played(uuid: str) -> list[str]:
            return [data for u, app, data in executes if u == uuid and app == "playback"]
        wait_until(lambda: len(played(second)) >= 3, what="the second caller's prompts")
        # One agent, busy, no handle time yet (180 s): the first waits ~180 s, the second ~360 s.
        assert played(first)[:2] == ["file_string://ivr/ivr-you_are_number.wav!digits/1.wav!ivr/ivr-in_line.wav",
                                     "local_stream://moh"]
        assert played(second)[:3] == ["file_string://ivr/ivr-you_are_number.wav!digits/2.wav!ivr/ivr-in_line.wav",
                                      "file_string://ivr/ivr-estimated_hold_time.wav!digits/6.wav!time/minutes.wav",
                                      "local_stream://moh"]
    finally:
        esl.close()
        h.close()


def test_the_simulated_day_of_benchmarks_ewt_day_runs():
    """benchmarks/ewt_day.py scores estimate_wait over a simulated day: keep it running."""
    from argparse import Namespace

    from benchmarks.ewt_day import Day, score
    args = Namespace(handle="lognormal", patience=300.0, threshold=120.0, callback_share=0.4, staffing_beta=0.5)
    contacts = Day(random.Random(5), args).run()
    served = [c for c in contacts if c.served_at is not None]
    assert 700 < len(contacts) < 1100 and len(served) + sum(c.abandoned for c in contacts) <= len(contacts)
    assert all(c.estimate == 0 for c in served if c.position <= c.available)
    s = score([(c.estimate, c.served_at - c.arrived) for c in served], 120)
    assert s["n"] == len(served) and sum(s["confusion"].values()) == len(served)
