"""Agents' state changes as operators (and, next, agents themselves) ask for them."""
from __future__ import annotations

from dataclasses import dataclass

from esl_cb.db.store import Store
from esl_cb.domain.errors import InvalidInput
from esl_cb.domain.states import AgentState as A

from .database import database_errors

# What each change leads to, and from which states (an agent offered a contact or on a call keeps it).
AGENT_CHANGES: dict[str, tuple[A, tuple[A, ...]]] = {
    "login": (A.UNAVAILABLE, (A.LOGGED_OUT,)),
    "available": (A.AVAILABLE, (A.LOGGED_OUT, A.REFUSED, A.UNAVAILABLE)),      # also clears Refused
    "unavailable": (A.UNAVAILABLE, (A.AVAILABLE, A.REFUSED, A.LOGGED_OUT)),
    "logout": (A.LOGGED_OUT, (A.AVAILABLE, A.REFUSED, A.UNAVAILABLE)),
}


@dataclass(frozen=True)
class AgentChange:
    name: str
    before: str
    after: str


class AgentService:
    def __init__(self, store: Store) -> None:
        self.store = store

    @database_errors
    def set_agent_state(self, name: str, state: str, operator: str | None = None) -> AgentChange:
        """`state`: login | available | unavailable | logout (AGENT_CHANGES). The change is audited
        and wakes the controllers at its commit. InvalidInput for another word; NotFound (no such
        agent); StaleState (wrong_state) when the agent is already there or cannot go there now
        (offered a contact, on a call)."""
        change = AGENT_CHANGES.get((state or "").strip().lower())
        if change is None:
            raise InvalidInput(f"state: {state!r} is not one of {', '.join(AGENT_CHANGES)}", where="state")
        to, allowed = change
        before = self.store.set_agent_state(name, to, allowed, operator=operator)
        return AgentChange(name, before.value, to.value)
