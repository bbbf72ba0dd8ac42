"""Estimated wait time (EWT) of a queued contact: how long until an agent is offered it.

The formula is the conditional expected wait of an M/M/N queue (Erlang's model of a contact
centre: calls arrive at random, handle times are exponential, N agents serve one FIFO queue):

    EWT = max(position - available, 0) x AHT / staffed

- `position`: the contact's place in its skill's queue, 1 = next (SPEC 3 order);
- `available`: agents of the skill free right now; the first `available` contacts are offered at
  once, so they wait 0;
- `staffed`: agents of the skill at work (Available, Offered, OnCall or WrapUp); once the free ones are
  taken, all `staffed` are busy and, with exponential handle times, one of them frees up on
  average every AHT / staffed seconds (the memoryless property: a call's remaining time has the
  same mean as a whole call);
- `AHT`: the recent average handle time of the skill, i.e. how long an agent is tied up by one
  contact, from the offer (ringing) to the hangup; a callback's CallDelaySec and its dial are in it,
  and so is wrap-up: the store adds the skill's configured wrap-up time to the measured average
  (db/queue_status.py), since an agent in WrapUp is not free for the next contact. With no recent
  data it is DEFAULT_AHT_SEC (no wrap-up added).

Limits (what makes the actual wait differ; benchmarks/ewt_day.py measures the error over a day):

- Handle times vary: the contact is served after (position - available) agent releases, each a
  random time; the estimate is their mean, not a bound. Its spread grows with sqrt(position).
- Contacts behind can overtake: a higher priority (or its acceleration) puts a later contact ahead,
  and lengthens the wait. Contacts ahead that hang up shorten it.
- Staffing changes: agents who log in, go Unavailable, OnBreak or are Refused (a delay after a miss)
  after the estimate. Agents in such a delay are not counted as staffed.
- Wrap-up as configured: agents who end it early, or whose own wrap-up differs from the skill's,
  make the real handle time differ.
- An agent with several skills is counted fully in each of them, so a skill that shares its agents
  waits longer than estimated.
- With no agent staffed the wait is unknown: EWT is NO_AGENT_EWT_SEC (an hour), meaning "long".
"""
from __future__ import annotations

import math

DEFAULT_AHT_SEC = 180.0         # with no contact handled in the window
NO_AGENT_EWT_SEC = 3600         # nobody staffed: "an hour or more", never 0
AHT_WINDOW_SEC = 3600           # the store averages handle times of contacts that ended in the last hour


def estimate_wait(position: int, staffed: int, available: int, aht_sec: float | None) -> int:
    """Whole seconds until the contact at `position` (1 = next) is offered an agent."""
    if position < 1:
        raise ValueError(f"a queue position starts at 1, not {position}")
    staffed, available = max(int(staffed), 0), max(int(available), 0)
    if position <= available:
        return 0
    if staffed == 0:
        return NO_AGENT_EWT_SEC
    aht = aht_sec if aht_sec is not None and aht_sec > 0 else DEFAULT_AHT_SEC
    return math.ceil((position - available) * aht / staffed)


def recent_aht(handle_times: list[float], default: float = DEFAULT_AHT_SEC) -> float:
    """The mean of recent handle times (seconds), or `default` when there are none: the store's
    query in Python (benchmarks/ewt_day.py uses it)."""
    return sum(handle_times) / len(handle_times) if handle_times else default
