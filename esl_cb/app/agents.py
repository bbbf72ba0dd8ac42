"""Agents' state changes as operators, programs (the API) and agents themselves (their phone) ask for them."""
from __future__ import annotations

from dataclasses import dataclass

from esl_cb.db.store import Store
from esl_cb.domain.errors import InvalidInput
from esl_cb.domain.states import ON_A_CALL
from esl_cb.domain.states import AgentState as A

from .database import database_errors

# What each change leads to, from which states at once, and from which at the end of the call (a logout
# or break asked while offered a contact, on a call or in wrap-up: stored as pending, applied by the
# database when the agent is freed).
AGENT_CHANGES: dict[str, tuple[A, tuple[A, ...], tuple[A, ...]]] = {
    "login": (A.UNAVAILABLE, (A.LOGGED_OUT,), ()),
    # also ends a delay after a miss, a break, and wrap-up early
    "available": (A.AVAILABLE, (A.LOGGED_OUT, A.REFUSED, A.UNAVAILABLE, A.ON_BREAK, A.WRAP_UP), ()),
    "unavailable": (A.UNAVAILABLE, (A.AVAILABLE, A.REFUSED, A.LOGGED_OUT, A.ON_BREAK), tuple(ON_A_CALL)),
    "break": (A.ON_BREAK, (A.AVAILABLE, A.REFUSED, A.UNAVAILABLE), tuple(ON_A_CALL)),
    "logout": (A.LOGGED_OUT, (A.AVAILABLE, A.REFUSED, A.UNAVAILABLE, A.ON_BREAK), tuple(ON_A_CALL)),
    "end_wrap_up": (A.AVAILABLE, (A.WRAP_UP,), ()),
}
# The settings of a skill or an agent (seconds, and misses in a row), as the CLI and API name them.
SETTING_NAMES = {"wrap_up": "wrap_up_sec", "reject_delay": "reject_delay_sec", "busy_delay": "busy_delay_sec",
                 "no_answer_delay": "no_answer_delay_sec", "left_delay": "left_delay_sec",
                 "max_no_answer": "max_no_answer"}


@dataclass(frozen=True)
class AgentChange:
    name: str
    before: str
    after: str
    when_call_ends: bool = False       # stored as pending: applied when the agent's call ends


class AgentService:
    def __init__(self, store: Store) -> None:
        self.store = store

    @database_errors
    def set_agent_state(self, name: str, state: str, operator: str | None = None,
                        reason: str | None = None, hold: tuple[float, str] | None = None) -> AgentChange:
        """`state`: login | available | unavailable | break | logout | end_wrap_up (AGENT_CHANGES). A
        break needs a reason. A logout, break or unavailable asked during a call (Offered, OnCall,
        WrapUp) takes effect when it ends. The change is audited and wakes the controllers at its
        commit. InvalidInput for another word or a break without a reason; NotFound (no such agent);
        StaleState (wrong_state) when the agent is already there or cannot go there now."""
        key = (state or "").strip().lower().replace("-", "_")
        change = AGENT_CHANGES.get(key)
        if change is None:
            raise InvalidInput(f"state: {state!r} is not one of {', '.join(AGENT_CHANGES)}", where="state")
        if key == "break" and not (reason or "").strip():
            raise InvalidInput("reason: a break needs a reason (lunch, training...)", where="reason")
        to, allowed, later = change
        ending_wrap_up = key == "end_wrap_up"
        before, pending = self.store.change_agent_state(name, to, allowed, operator=operator,
                                                        reason=reason if key == "break" else None, later_from=later,
                                                        keep_pending=ending_wrap_up,
                                                        hold=hold if to is A.AVAILABLE else None)
        # The end of wrap-up lets a logout or break asked during the call start now: say where it led.
        after = self.store.agent(name).state if ending_wrap_up else to.value
        return AgentChange(name, before.value, after, pending)

    @database_errors
    def end_wrap_up(self, name: str, operator: str | None = None) -> AgentChange:
        """The agent is done with their wrap-up before its time: Available now (StaleState if not in WrapUp)."""
        return self.set_agent_state(name, "end_wrap_up", operator)

    @database_errors
    def set_settings(self, name: str, operator: str | None = None, skill: bool = False,
                     **settings: int | None) -> dict[str, int | None]:
        """Wrap-up, delays (seconds) and max-no-answer of a skill (`skill`) or an agent (None, for an
        agent: back to the skill's). InvalidInput for an unknown name or a negative value."""
        values: dict[str, int | None] = {}
        for key, value in settings.items():
            column = SETTING_NAMES.get(key)
            if column is None:
                raise InvalidInput(f"{key}: not a setting ({', '.join(SETTING_NAMES)})", where=key)
            if value is None and skill:
                raise InvalidInput(f"{key}: a skill needs a number", where=key)
            if value is not None and (not isinstance(value, int) or value < 0 or value > 86400):
                raise InvalidInput(f"{key}: {value!r} is not a whole number from 0 to 86400", where=key)
            values[column] = value
        if not values:
            raise InvalidInput("nothing to change: give at least one setting", where="settings")
        self.store.set_agent_settings(name, values, operator=operator, skill=skill)
        return values
