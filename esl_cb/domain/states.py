"""Contact and agent states, and which transitions are legal.

Every state change goes through the store with the expected previous state as
a guard, so a transition missing from these tables is a bug, not a race. The database holds the
contact table too (contact_transitions, migration 0007, and a trigger that refuses any other change):
a change here needs a migration that changes it there (tests/test_transitions.py compares them).
"""
from __future__ import annotations

import enum


class ContactState(str, enum.Enum):
    ARRIVED = "arrived"                  # call answered, script running, not queued yet
    QUEUED = "queued"                    # live caller waiting for an agent
    OFFERED = "offered"                  # an agent's phone is ringing for this contact
    CALLBACK_QUEUED = "callback_queued"  # caller hung up, place kept, waiting for an agent
    ACCEPTED = "accepted"                # agent answered a callback; CallDelaySec running
    DIALLING = "dialling"                # the customer's phone is ringing
    CONNECTED = "connected"              # customer and agent talk
    ENDED = "ended"                      # final; see Outcome

    @property
    def final(self) -> bool:
        return self is ContactState.ENDED


class Outcome(str, enum.Enum):
    HANDLED = "handled"
    ABANDONED = "abandoned"
    CALLBACK_COMPLETED = "callback_completed"
    CALLBACK_FAILED = "callback_failed"
    CANCELLED = "cancelled"
    NOT_QUEUED = "not_queued"            # the script ended without ever queueing the contact
    MERGED = "merged"                    # asked for a callback already pending for the same number and skill
    POLICY_REFUSED = "policy_refused"    # the destination policy refused it before a dial (see policy_refusals)
    CALLBACK_EXPIRED = "callback_expired"  # no agent took it before its ExpireAfterSec


class AgentState(str, enum.Enum):
    LOGGED_OUT = "LoggedOut"
    AVAILABLE = "Available"
    OFFERED = "Offered"
    ON_CALL = "OnCall"
    REFUSED = "Refused"          # missed an offer: not offered until its delay ends (state_until, state_reason)
    UNAVAILABLE = "Unavailable"
    WRAP_UP = "WrapUp"           # after a conversation, until its wrap-up time ends or they end it
    ON_BREAK = "OnBreak"         # with a reason (state_reason): asked for, or 'no_answer' after max-no-answer


# Why an agent missed an offer (the delay and its reason; each one counts towards max-no-answer).
class Miss(str, enum.Enum):
    REJECTED = "rejected"        # declined the call (603, CALL_REJECTED)
    BUSY = "busy"                # 486, USER_BUSY
    NO_ANSWER = "no_answer"      # rang out, or any other reason the phone did not take it
    LEFT = "left"                # answered a callback, then hung up during CallDelaySec


# The reason an agent put on a break by max-no-answer carries.
NO_ANSWER_BREAK = "no_answer"
# The reason an agent is Refused after accepting a callback whose CallDelaySec is 60 or more (SPEC 2
# rule 4): the script's fault, not a miss.
CALL_DELAY_REFUSAL = "call_delay_60"
# An agent in these states is on a call (or just after it): a logout or break asked now waits for its end.
ON_A_CALL = frozenset({AgentState.OFFERED, AgentState.ON_CALL, AgentState.WRAP_UP})


# Causes that say the agent's phone could not be reached at all (not registered on this switch, no route):
# no ring, so no miss of the agent's; they are not offered for PHONE_UNREACHABLE_PAUSE instead. (Counted as
# misses, three of them put an agent whose phone re-registered a moment later OnBreak 'no_answer'.)
PHONE_UNREACHABLE_CAUSES = frozenset({"USER_NOT_REGISTERED", "SUBSCRIBER_ABSENT", "NO_ROUTE_DESTINATION",
                                      "UNALLOCATED_NUMBER"})
PHONE_UNREACHABLE_PAUSE = 30.0


def miss_of(cause: str | None) -> Miss:
    """The kind of miss a hangup cause of the agent's leg means (what mod_callcenter distinguishes)."""
    if cause == "USER_BUSY":
        return Miss.BUSY
    if cause == "CALL_REJECTED":
        return Miss.REJECTED
    return Miss.NO_ANSWER


C = ContactState
CONTACT_TRANSITIONS: dict[ContactState, set[ContactState]] = {
    C.ARRIVED: {C.QUEUED, C.ENDED},
    C.QUEUED: {C.OFFERED, C.CALLBACK_QUEUED, C.ENDED},
    C.OFFERED: {C.QUEUED, C.CALLBACK_QUEUED, C.CONNECTED, C.ACCEPTED, C.ENDED},
    C.CALLBACK_QUEUED: {C.OFFERED, C.ENDED},
    # ACCEPTED -> CONNECTED: the customer answered before 'dialling' was recorded (it is recorded
    # right after the originate goes out).
    C.ACCEPTED: {C.DIALLING, C.CONNECTED, C.CALLBACK_QUEUED, C.ENDED},
    C.DIALLING: {C.CONNECTED, C.CALLBACK_QUEUED, C.ENDED},
    # Back to the queue: the agent left before the bridge (a callback), or the bridge of a live caller
    # to their agent failed (they keep their place).
    C.CONNECTED: {C.ENDED, C.CALLBACK_QUEUED, C.QUEUED},
    C.ENDED: set(),
}
# The states a contact is stored in first: a caller who arrived, or a callback an operator booked.
CONTACT_INITIAL_STATES: frozenset[ContactState] = frozenset({C.ARRIVED, C.CALLBACK_QUEUED})

A = AgentState
# Offered/OnCall/WrapUp -> LoggedOut/OnBreak/Unavailable: a state asked during the call (pending_state),
# applied by the database when the agent is freed.
AGENT_TRANSITIONS: dict[AgentState, set[AgentState]] = {
    A.LOGGED_OUT: {A.AVAILABLE, A.UNAVAILABLE, A.ON_BREAK},
    A.AVAILABLE: {A.OFFERED, A.UNAVAILABLE, A.ON_BREAK, A.LOGGED_OUT},
    A.OFFERED: {A.ON_CALL, A.REFUSED, A.ON_BREAK, A.AVAILABLE, A.UNAVAILABLE, A.LOGGED_OUT},
    A.ON_CALL: {A.WRAP_UP, A.AVAILABLE, A.REFUSED, A.ON_BREAK, A.UNAVAILABLE, A.LOGGED_OUT},
    A.WRAP_UP: {A.AVAILABLE, A.ON_BREAK, A.UNAVAILABLE, A.LOGGED_OUT},
    A.REFUSED: {A.AVAILABLE, A.ON_BREAK, A.UNAVAILABLE, A.LOGGED_OUT},
    A.ON_BREAK: {A.AVAILABLE, A.UNAVAILABLE, A.LOGGED_OUT},
    A.UNAVAILABLE: {A.AVAILABLE, A.ON_BREAK, A.LOGGED_OUT},
}


def contact_can(frm: ContactState, to: ContactState) -> bool:
    return to in CONTACT_TRANSITIONS[frm]


def agent_can(frm: AgentState, to: AgentState) -> bool:
    return to in AGENT_TRANSITIONS[frm] or frm == to
