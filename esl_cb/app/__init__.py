"""The application services: one place that checks what a request may do and raises the domain's
errors (esl_cb/domain/errors.py) with their stable codes, for every front end (the CLI today, the
HTTP API next). Each service wraps the store; none knows click, ESL or the controller.

  callbacks.py  booking a callback (the same policy, limits, merge and audit as a script's Callback),
                cancelling one, operators' policy overrides
  agents.py     agents' state changes (login, available, unavailable, logout)
  skills.py     a skill's opening hours and callback expiry
  phones.py     agents on their phones: PINs, feature codes
"""
from __future__ import annotations

from .agents import AGENT_CHANGES, AgentChange, AgentService
from .callbacks import MAX_DATA_BYTES, Booking, CallbackService, Cancelled, Window
from .skills import SkillService

__all__ = ["AGENT_CHANGES", "AgentChange", "AgentService", "Booking", "CallbackService", "Cancelled",
           "MAX_DATA_BYTES", "SkillService", "Window"]
