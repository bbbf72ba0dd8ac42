"""Switches as data (issue 18): each FreeSWITCH that controllers use, with its capacity and state.

A controller is the sidecar of one switch (it talks to that switch's event socket and serves its
callers' outbound sockets); several controllers may share one switch. A switch's limits hold across
all of them: each live controller of a switch takes its share of the switch's sessions-per-second and
voice ports (esl_cb/controller/fleet.py), read at each heartbeat, so together they never exceed them.
A draining switch takes no new offers or callback dials; its calls finish. Controllers of a switch
say when they last reached it (last_seen).

Revision ID: 0009
Revises: 0008
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "switches",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("esl", sa.String(255), nullable=False, unique=True),     # host:port of its event socket
        sa.Column("sessions_per_second", sa.Integer, nullable=True),        # its switch.conf.xml setting
        sa.Column("max_sessions", sa.Integer, nullable=True),
        sa.Column("voice_ports", sa.Integer, nullable=True),                # callback legs at once, all controllers
        sa.Column("state", sa.String(16), nullable=False, server_default="up"),   # up | draining
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=True),                          # a controller of it was connected
        sa.CheckConstraint("state IN ('up', 'draining')", name="ck_switches_state"),
    )


def downgrade() -> None:
    op.drop_table("switches")
