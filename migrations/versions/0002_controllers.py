"""Controllers' heartbeats, so the others can take over the contacts of one that died.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "controllers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("esl", sa.String(255), nullable=False),
    )
    op.create_index("ix_contacts_controller_id", "contacts", ["controller_id"])


def downgrade() -> None:
    op.drop_index("ix_contacts_controller_id", "contacts")
    op.drop_table("controllers")
