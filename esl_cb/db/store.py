"""Persistence: every state change of a contact or agent, written before anyone acts on it.

The store is one object in several files, each a step of a contact's life (base.py has what they
share; each state change is one transaction):

  agents.py     agents and skills, as operators set them
  agent_states.py  wrap-up, delays after a miss, their end, the state history's report
  contacts.py   arrival, the queue, the Callback action, cancel
  bookings.py   callbacks booked by an operator or a program (no call came in)
  controllers.py  controllers as members: register (an epoch), heartbeat, adopt the dead ones' contacts
  dispatch.py   offers to agents and the end of conversations
  dialling.py   callback attempts, their dials and legs (billing)
  policy.py     the destination policy's overrides and refusals; the operators' audit log
  phones.py     agents' phones: registrations as the switches report them, PINs
  queue_status.py  where a queued contact stands: its place, the skill's agents, recent handle time
"""
from __future__ import annotations

from .agents import AgentsStore
from .base import (DialPlan, Fenced, IllegalTransition, NotFound, Offer, PolicyRefused, RateLimited, StaleState,
                   StoreError, UnknownSkill, as_utc, make_engine, utcnow)
from .bookings import BookingsStore
from .controllers import ControllersStore
from .dialling import DiallingStore
from .dispatch import DispatchStore
from .policy import PolicyStore
from .queue_status import QueueStatusStore
from .phones import PhonesStore
from .switches import SwitchesStore

__all__ = ["Store", "DialPlan", "Fenced", "IllegalTransition", "NotFound", "Offer", "PolicyRefused", "RateLimited",
           "StaleState", "StoreError", "UnknownSkill", "as_utc", "make_engine", "utcnow"]


class Store(AgentsStore, PhonesStore, BookingsStore, ControllersStore, DispatchStore, DiallingStore, PolicyStore, QueueStatusStore,
            SwitchesStore):
    """The database, as the controller and the CLI use it."""
