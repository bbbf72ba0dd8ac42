"""Contacts, legs, agents, skills, callback attempts, and the reporting and billing views.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# The views as they were then (0006 adds columns to reporting_contacts).
REPORTING_VIEW = """
CREATE VIEW reporting_contacts AS
SELECT c.id AS contact_id,
       c.direction,
       s.name AS skill,
       c.original_ani, c.original_dnis, c.ani, c.dnis,
       c.priority_initial, c.priority_acceleration, c.priority_max,
       c.callback_requested,
       c.callback_number,
       c.arrived_at, c.queued_at, c.callback_requested_at, c.offered_at, c.accepted_at,
       c.dialled_at, c.connected_at, c.ended_at,
       a.name AS agent,
       c.state,
       c.outcome,
       c.attempts
FROM contacts c
LEFT JOIN skills s ON s.id = c.skill_id
LEFT JOIN agents a ON a.id = c.agent_id
"""

BILLING_VIEW = """
CREATE VIEW billing_legs AS
SELECT l.uuid,
       l.contact_id,
       CASE l.kind WHEN 'caller' THEN 'inbound' ELSE 'outbound' END AS direction,
       l.kind,
       a.name AS agent,
       l.from_number, l.to_number,
       l.started_at, l.answered_at, l.ended_at,
       COALESCE(l.billsec, 0) AS billable_seconds,
       l.hangup_cause
FROM legs l
LEFT JOIN agents a ON a.id = l.agent_id
"""


def upgrade() -> None:
    op.create_table(
        "skills",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
    )
    op.create_table(
        "agents",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("dial_string", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("state_changed_at", TS, nullable=False),
        sa.Column("available_since", TS, nullable=True),
        sa.Column("contact_id", BIGID, nullable=True),
        sa.Column("leg_uuid", sa.String(36), nullable=True),
        sa.Column("controller_id", sa.String(64), nullable=True),
    )
    op.create_table(
        "agent_skills",
        sa.Column("agent_id", sa.Integer, sa.ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("skill_id", sa.Integer, sa.ForeignKey("skills.id", ondelete="CASCADE"), primary_key=True),
    )
    op.create_table(
        "contacts",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=True),
        sa.Column("script", sa.String(255), nullable=False),
        sa.Column("skill_id", sa.Integer, sa.ForeignKey("skills.id"), nullable=True),
        sa.Column("caller_uuid", sa.String(36), nullable=True),
        sa.Column("original_ani", sa.String(32), nullable=False),
        sa.Column("original_dnis", sa.String(32), nullable=False),
        sa.Column("ani", sa.String(32), nullable=False),
        sa.Column("dnis", sa.String(32), nullable=False),
        sa.Column("priority_initial", sa.Float, nullable=False),
        sa.Column("priority_acceleration", sa.Float, nullable=False),
        sa.Column("priority_max", sa.Float, nullable=False),
        sa.Column("callback_requested", sa.Boolean, nullable=False),
        sa.Column("callback_number", sa.String(32), nullable=True),
        sa.Column("callback_caller_id", sa.String(32), nullable=True),
        sa.Column("call_delay_sec", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("agent_id", sa.Integer, sa.ForeignKey("agents.id", ondelete="SET NULL"), nullable=True),
        sa.Column("agent_leg_uuid", sa.String(36), nullable=True),
        sa.Column("callback_leg_uuid", sa.String(36), nullable=True),
        sa.Column("dial_due_at", TS, nullable=True),
        sa.Column("retry_at", TS, nullable=True),
        sa.Column("arrived_at", TS, nullable=False),
        sa.Column("queued_at", TS, nullable=True),
        sa.Column("callback_requested_at", TS, nullable=True),
        sa.Column("offered_at", TS, nullable=True),
        sa.Column("accepted_at", TS, nullable=True),
        sa.Column("dialled_at", TS, nullable=True),
        sa.Column("connected_at", TS, nullable=True),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("controller_id", sa.String(64), nullable=True),
    )
    op.create_index("ix_contacts_state_skill", "contacts", ["state", "skill_id"])
    op.create_index("ix_contacts_callback_number", "contacts", ["callback_number", "skill_id"])
    op.create_table(
        "legs",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column("contact_id", BIGID, sa.ForeignKey("contacts.id"), nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("direction", sa.String(8), nullable=False),
        sa.Column("agent_id", sa.Integer, sa.ForeignKey("agents.id", ondelete="SET NULL"), nullable=True),
        sa.Column("from_number", sa.String(64), nullable=False),
        sa.Column("to_number", sa.String(255), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("answered_at", TS, nullable=True),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("billsec", sa.Integer, nullable=True),
        sa.Column("hangup_cause", sa.String(40), nullable=True),
    )
    op.create_index("ix_legs_contact_id", "legs", ["contact_id"])
    op.create_table(
        "callback_attempts",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("contact_id", BIGID, sa.ForeignKey("contacts.id"), nullable=False),
        sa.Column("attempt_no", sa.Integer, nullable=False),
        sa.Column("leg_uuid", sa.String(36), nullable=False, unique=True),
        sa.Column("agent_id", sa.Integer, sa.ForeignKey("agents.id", ondelete="SET NULL"), nullable=True),
        sa.Column("number", sa.String(32), nullable=False),
        sa.Column("caller_id", sa.String(32), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("ended_at", TS, nullable=True),
        sa.Column("result", sa.String(32), nullable=True),
        sa.UniqueConstraint("contact_id", "attempt_no"),
    )
    op.create_index("ix_callback_attempts_contact_id", "callback_attempts", ["contact_id"])
    op.execute(REPORTING_VIEW)
    op.execute(BILLING_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW billing_legs")
    op.execute("DROP VIEW reporting_contacts")
    op.drop_table("callback_attempts")
    op.drop_table("legs")
    op.drop_table("contacts")
    op.drop_table("agent_skills")
    op.drop_table("agents")
    op.drop_table("skills")
