"""Legs owed a hang-up, stored (the controller held them in memory only).

A leg the controller meant to end while its switch could not be asked (ESL cut, switch restarting) is
hung up once the switch answers again. Kept in memory, a crash or a restart of the controller before
then forgot it: an agent parked on that switch stayed on the line with nobody to bridge them. One row
per leg, with its switch (the identity `switch_identity` gives), so whichever controller next talks
to that switch hangs it up; the row goes when the switch says it is gone.

Revision ID: 0014
Revises: 0013
"""
import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "legs_to_hang_up",
        sa.Column("uuid", sa.String(64), primary_key=True),
        sa.Column("switch", sa.String(255), nullable=False),
        sa.Column("cause", sa.String(64), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_legs_to_hang_up_switch", "legs_to_hang_up", ["switch"])


def downgrade() -> None:
    op.drop_index("ix_legs_to_hang_up_switch", table_name="legs_to_hang_up")
    op.drop_table("legs_to_hang_up")
