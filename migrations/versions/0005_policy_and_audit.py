"""Who may be called back (issue 13): operators' overrides, the refusals the reports show, the
indexes the rate limits count with, and the audit log of operators' actions.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
BIGID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# The reporting view of 0001, for the downgrade: SQLite rebuilds `contacts` to drop a column, which
# fails while a view names it.
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


def upgrade() -> None:
    op.add_column("contacts", sa.Column("policy_override", sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index("ix_contacts_number_requested", "contacts", ["callback_number", "callback_requested_at"])
    op.create_index("ix_contacts_ani_requested", "contacts", ["original_ani", "callback_requested_at"])
    op.create_table(
        "policy_overrides",
        sa.Column("number", sa.String(32), primary_key=True),
        sa.Column("until", TS, nullable=True),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "policy_refusals",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("contact_id", BIGID, sa.ForeignKey("contacts.id"), nullable=True),
        sa.Column("number", sa.String(32), nullable=False),
        sa.Column("calling_number", sa.String(32), nullable=False),
        sa.Column("stage", sa.String(8), nullable=False),
        sa.Column("rule", sa.String(24), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_index("ix_policy_refusals_at", "policy_refusals", ["at"])
    op.create_index("ix_policy_refusals_contact_id", "policy_refusals", ["contact_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", BIGID, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("policy_refusals")
    op.drop_table("policy_overrides")
    op.drop_index("ix_contacts_ani_requested", "contacts")
    op.drop_index("ix_contacts_number_requested", "contacts")
    op.execute("DROP VIEW reporting_contacts")
    with op.batch_alter_table("contacts") as batch:
        batch.drop_column("policy_override")
    op.execute(REPORTING_VIEW)
