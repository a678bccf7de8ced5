"""Leader leases: one row per job that must run on one replica at a time (the stale sweeper),
naming the replica that holds it and until when, on the database clock
(``stockade.verifier.leadership``; the table matches its ``leases``).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=True),  # None: released
        sa.Column("lease_until", sa.BigInteger(), nullable=True),  # ms, database clock
        # Incremented at every change of holder: a fencing token for whatever the holder does.
        sa.Column("term", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("leases")
