"""SQLAlchemy models: the database is the source of truth for every contact and agent."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite so ids still autoincrement.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# The states of a contact waiting to be offered (the partial index of the claim, migration 0010).
_WAITING = "state IN ('queued', 'callback_queued')"


class Base(DeclarativeBase):
    pass


class Skill(Base):
    __tablename__ = "skills"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Opening hours (esl_cb/domain/hours.py): callbacks are dialled only while open.
    timezone: Mapped[str] = mapped_column(String(64), default="UTC", server_default="UTC")
    hours: Mapped[str] = mapped_column(Text, default="", server_default="")
    closed_dates: Mapped[str] = mapped_column(Text, default="", server_default="")
    callback_expire_sec: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Kept by the controllers from the hours above, so the claim needs no calendar arithmetic.
    callbacks_open: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # The number the skill's customers know: a booking without a caller ID and a script's CallerID
    # that is no dialable number show it (migration 0008).
    outbound_caller_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # After a conversation and after a miss (migration 0011; README "Agents: wrap-up, delays, breaks").
    wrap_up_sec: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reject_delay_sec: Mapped[int] = mapped_column(Integer, default=10, server_default="10")
    busy_delay_sec: Mapped[int] = mapped_column(Integer, default=60, server_default="60")
    no_answer_delay_sec: Mapped[int] = mapped_column(Integer, default=60, server_default="60")
    left_delay_sec: Mapped[int] = mapped_column(Integer, default=10, server_default="10")
    max_no_answer: Mapped[int] = mapped_column(Integer, default=3, server_default="3")


class Agent(Base):
    __tablename__ = "agents"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    dial_string: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="LoggedOut")
    state_changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Longest idle first: the time the agent last became free.
    available_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    contact_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    leg_uuid: Mapped[str | None] = mapped_column(String(36), nullable=True)
    controller_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The switch refused to ring this agent (it was full): not offered again before this time.
    offer_not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # The skill's settings overridden for this agent (NULL: the skill's).
    wrap_up_sec: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reject_delay_sec: Mapped[int | None] = mapped_column(Integer, nullable=True)
    busy_delay_sec: Mapped[int | None] = mapped_column(Integer, nullable=True)
    no_answer_delay_sec: Mapped[int | None] = mapped_column(Integer, nullable=True)
    left_delay_sec: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_no_answer: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Why Refused (a delay after a miss) or OnBreak; when WrapUp or the delay ends.
    state_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # A logout or break asked during a call: the database applies it when the agent is freed.
    pending_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    pending_reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    missed_in_a_row: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The directory user the dial string rings (migration 0013): tracked, offered only while registered.
    # NULL: not tracked (a gateway, a plain SIP URI, a phone registered at a proxy).
    phone_user: Mapped[str | None] = mapped_column(String(64), nullable=True)
    phone_domain: Mapped[str | None] = mapped_column(String(128), nullable=True)
    # Since when no switch has a registration of that phone (NULL: registered, or not known yet).
    phone_unregistered_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Feature codes on the phone: the digits keyed to log in, and the PIN's scrypt hash (never the PIN).
    pin_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    login_number: Mapped[str | None] = mapped_column(String(32), nullable=True)
    pin_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    pin_locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    # The agent idle longest, for esl_cb_claim (migration 0010).
    __table_args__ = (Index("ix_agents_available", "available_since", "id", postgresql_where=text("state = 'Available'"),
                            sqlite_where=text("state = 'Available'")),
                      Index("ix_agents_login_number", "login_number", unique=True))


class PhoneRegistration(Base):
    """A directory user with at least one registration on a switch (migration 0013), as the
    controllers learn it from the switch's events and its `show registrations`."""
    __tablename__ = "phone_registrations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    switch: Mapped[str] = mapped_column(String(255))
    reg_user: Mapped[str] = mapped_column(String(64), index=True)
    realm: Mapped[str] = mapped_column(String(128))
    contact: Mapped[str] = mapped_column(Text)
    registered_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    __table_args__ = (UniqueConstraint("switch", "reg_user", "realm", name="uq_phone_registrations_user"),)


class LegToHangUp(Base):
    """A leg this project meant to end while its switch could not be asked (migration 0014): hung up by
    whichever controller next talks to that switch, even after a restart."""
    __tablename__ = "legs_to_hang_up"
    uuid: Mapped[str] = mapped_column(String(64), primary_key=True)
    switch: Mapped[str] = mapped_column(String(255), index=True)
    cause: Mapped[str] = mapped_column(String(64))
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AgentStateChange(Base):
    """Every agent state change, written by triggers on `agents` (migration 0011) whatever the path."""
    __tablename__ = "agent_state_history"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    agent_id: Mapped[int] = mapped_column(Integer)          # no foreign key: kept after the agent goes
    agent_name: Mapped[str] = mapped_column(String(64))
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(64), nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    contact_id: Mapped[int | None] = mapped_column(BigId, nullable=True)

    __table_args__ = (Index("ix_agent_state_history_agent_at", "agent_id", "at"),)


class AgentSkill(Base):
    __tablename__ = "agent_skills"
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True)
    skill_id: Mapped[int] = mapped_column(ForeignKey("skills.id", ondelete="CASCADE"), primary_key=True)


class Contact(Base):
    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    direction: Mapped[str] = mapped_column(String(8), default="inbound")
    state: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str | None] = mapped_column(String(20), nullable=True)
    script: Mapped[str] = mapped_column(String(255), default="")
    skill_id: Mapped[int | None] = mapped_column(ForeignKey("skills.id"), nullable=True)
    caller_uuid: Mapped[str | None] = mapped_column(String(36), nullable=True)
    original_ani: Mapped[str] = mapped_column(String(32), default="")
    original_dnis: Mapped[str] = mapped_column(String(32), default="")
    ani: Mapped[str] = mapped_column(String(32), default="")
    dnis: Mapped[str] = mapped_column(String(32), default="")
    priority_initial: Mapped[float] = mapped_column(Float, default=0)
    priority_acceleration: Mapped[float] = mapped_column(Float, default=0)
    priority_max: Mapped[float] = mapped_column(Float, default=0)
    callback_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    callback_number: Mapped[str | None] = mapped_column(String(32), nullable=True)
    callback_caller_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    call_delay_sec: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"), nullable=True)
    agent_leg_uuid: Mapped[str | None] = mapped_column(String(36), nullable=True)
    callback_leg_uuid: Mapped[str | None] = mapped_column(String(36), nullable=True)
    dial_due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    arrived_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    callback_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    offered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    dialled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    connected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    controller_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The destination policy allowed this callback only through an operator's override.
    policy_override: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    expire_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    callback_options: Mapped[str | None] = mapped_column(Text, nullable=True)    # JSON: confirm/whisper prompts
    confirmed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)       # the customer pressed the key

    __table_args__ = (
        Index("ix_contacts_state_skill", "state", "skill_id"),
        Index("ix_contacts_callback_number", "callback_number", "skill_id"),
        Index("ix_contacts_controller_id", "controller_id"),
        # The rate limits count recent requests per destination and per calling number.
        Index("ix_contacts_number_requested", "callback_number", "callback_requested_at"),
        Index("ix_contacts_ani_requested", "original_ani", "callback_requested_at"),
        # Queuestatus averages the handle time of a skill's contacts ended in the last hour.
        Index("ix_contacts_skill_ended", "skill_id", "ended_at"),
        # esl_cb_claim's queue heads (migration 0010): one group per skill, state and priority settings.
        Index("ix_contacts_waiting_head", "skill_id", "state", "priority_initial", "priority_acceleration",
              "priority_max", "queued_at", "id", postgresql_where=text(_WAITING), sqlite_where=text(_WAITING)),
        # A waiting contact's place (migration 0012): those ahead counted as ranges where the priority
        # does not accelerate (then it is priority_initial), computed over the few that do.
        Index("ix_contacts_waiting_fixed", "skill_id", "priority_initial", "queued_at", "id",
              postgresql_where=text(f"{_WAITING} AND priority_acceleration = 0"),
              sqlite_where=text(f"{_WAITING} AND priority_acceleration = 0")),
        Index("ix_contacts_waiting_accelerating", "skill_id",
              postgresql_where=text(f"{_WAITING} AND priority_acceleration <> 0"),
              sqlite_where=text(f"{_WAITING} AND priority_acceleration <> 0")),
    )


class ContactTransition(Base):
    """The contact state table as the database enforces it (migration 0007's triggers refuse any other
    change); from_state 'new' lists the states a contact may be inserted in. Written by migrations only."""

    __tablename__ = "contact_transitions"
    from_state: Mapped[str] = mapped_column(String(16), primary_key=True)
    to_state: Mapped[str] = mapped_column(String(16), primary_key=True)


class Switch(Base):
    """A FreeSWITCH that controllers use, its capacity shared by all its controllers (migration 0009)."""

    __tablename__ = "switches"
    __table_args__ = (CheckConstraint("state IN ('up', 'draining')", name="ck_switches_state"),)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    esl: Mapped[str] = mapped_column(String(255), unique=True)
    sessions_per_second: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_sessions: Mapped[int | None] = mapped_column(Integer, nullable=True)
    voice_ports: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[str] = mapped_column(String(16), server_default="up")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ControllerMember(Base):
    """A running `esl-cb run` as a member of the controllers sharing this database (the process itself
    is esl_cb.controller.service.Controller): the others take over its contacts when its heartbeat stops.
    Times are the database's clock (esl_cb/db/controllers.py)."""

    __tablename__ = "controllers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    esl: Mapped[str] = mapped_column(String(255))           # its switch: an adopter takes only what its own can see
    # The fencing token: new at each registration (PostgreSQL: the sequence controllers_epoch_seq, the
    # column's default; SQLite: max + 1), never given twice; a heartbeat needs its own epoch.
    epoch: Mapped[int] = mapped_column(BigInteger)


class Leg(Base):
    """One telephony leg as billed: the caller's, the agent's, or the callback to the customer."""

    __tablename__ = "legs"
    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), nullable=True, index=True)
    kind: Mapped[str] = mapped_column(String(16))           # caller | agent | callback
    direction: Mapped[str] = mapped_column(String(8))       # inbound | outbound
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"), nullable=True)
    from_number: Mapped[str] = mapped_column(String(64), default="")
    to_number: Mapped[str] = mapped_column(String(255), default="")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    answered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    billsec: Mapped[int | None] = mapped_column(Integer, nullable=True)
    hangup_cause: Mapped[str | None] = mapped_column(String(40), nullable=True)


class CallbackAttempt(Base):
    __tablename__ = "callback_attempts"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    attempt_no: Mapped[int] = mapped_column(Integer)
    leg_uuid: Mapped[str] = mapped_column(String(36), unique=True)
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"), nullable=True)
    number: Mapped[str] = mapped_column(String(32))
    caller_id: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    result: Mapped[str | None] = mapped_column(String(32), nullable=True)
    confirmed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)

    __table_args__ = (UniqueConstraint("contact_id", "attempt_no"),)


class PolicyOverride(Base):
    """An operator allowed one number the destination policy refuses (audited)."""

    __tablename__ = "policy_overrides"
    number: Mapped[str] = mapped_column(String(32), primary_key=True)
    until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    operator: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PolicyRefusal(Base):
    """A callback the policy refused: when it was requested (the caller stayed on the line) or before
    a dial (the contact ended). Analysts query it like the views."""

    __tablename__ = "policy_refusals"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"), nullable=True, index=True)
    number: Mapped[str] = mapped_column(String(32))
    calling_number: Mapped[str] = mapped_column(String(32), default="")
    stage: Mapped[str] = mapped_column(String(8))           # request | dial
    rule: Mapped[str] = mapped_column(String(24))           # country | type | deny_prefix | per_number | per_caller
    reason: Mapped[str] = mapped_column(Text)


class AuditEntry(Base):
    """An operator's action: who, what, when."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    operator: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[str] = mapped_column(String(255))
    detail: Mapped[str] = mapped_column(Text, default="")


# -- the HTTP API (migration 0008) ------------------------------------------------------------------
class ApiToken(Base):
    """A bearer token of the HTTP API: only the SHA-256 of its secret is kept."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))                   # booking | agent | supervisor | admin
    agent: Mapped[str | None] = mapped_column(String(64), nullable=True)   # an agent token's own agent
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    webhook_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    webhook_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)   # signs, so kept as is


class ApiEvent(Base):
    """A live event as the stream sent it (migration 0012): kept so that a client reconnecting with
    Last-Event-ID gets what it missed. Written by esl_cb_event() on PostgreSQL."""

    __tablename__ = "api_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    doc: Mapped[str] = mapped_column(Text)
    # The writing transaction's id and its snapshot's xmin: ids commit out of order (see 0012).
    tx_id: Mapped[int | None] = mapped_column(BigInteger)
    tx_xmin: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_api_events_at", "at"), Index("ix_api_events_tx_id", "tx_id"))


class ApiBooking(Base):
    """Which token booked (or joined) which callback: a booking token sees only these."""

    __tablename__ = "api_bookings"
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), primary_key=True)
    booked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_api_bookings_token", "token_id", "contact_id"),)


class IdempotencyKey(Base):
    """A POST's first answer under its Idempotency-Key, per token, kept 24 hours (status 0: running)."""

    __tablename__ = "idempotency_keys"
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[int] = mapped_column(Integer)
    response: Mapped[str | None] = mapped_column(Text, nullable=True)
    location: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class CallbackAssignment(Base):
    """A callback a supervisor reserved for one agent: claim_queue offers it to that agent only."""

    __tablename__ = "callback_assignments"
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WebhookDelivery(Base):
    """A callback's outcome to POST to a token's webhook (written by a trigger when the callback ends)."""

    __tablename__ = "webhook_outbox"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    given_up_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (UniqueConstraint("token_id", "contact_id", name="uq_webhook_outbox_token_contact"),
                      Index("ix_webhook_outbox_due", "delivered_at", "next_attempt_at"))
