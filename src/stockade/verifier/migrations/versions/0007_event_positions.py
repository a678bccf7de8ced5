"""Event positions and webhook leases: delivery in commit order, one deliverer per URL.

- ``events.position``: the event's place in the stream (and its public id), given after
  commit by ``events.sequence_events``. Existing events keep their id as their position, so
  stored webhook cursors and clients' ``Last-Event-ID`` keep their meaning.
- ``webhook_cursors.claimed_by`` / ``lease_until``: the replica delivering to a URL and until
  when (milliseconds since the epoch, database clock); another replica takes over after it.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("events") as table:
        table.add_column(sa.Column("position", sa.BigInteger(), nullable=True))
    op.execute("UPDATE events SET position = id")
    op.create_index("ix_events_position", "events", ["position"], unique=True)
    with op.batch_alter_table("webhook_cursors") as table:
        table.add_column(sa.Column("claimed_by", sa.String(64), nullable=True))
        table.add_column(sa.Column("lease_until", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_cursors") as table:
        table.drop_column("lease_until")
        table.drop_column("claimed_by")
    op.drop_index("ix_events_position", "events")
    with op.batch_alter_table("events") as table:
        table.drop_column("position")
