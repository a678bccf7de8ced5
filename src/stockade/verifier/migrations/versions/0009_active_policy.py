"""The active policy in the database: one row every replica reads, so replicas agree on the
policy nodes are appraised under, and applying another policy id never changes it.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "active_policy",
        sa.Column("singleton", sa.Integer(), primary_key=True),  # always 1: one row
        sa.Column("policy_id", sa.String(255), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=False), nullable=False),
        sa.CheckConstraint("singleton = 1", name="ck_active_policy_singleton"),
    )


def downgrade() -> None:
    op.drop_table("active_policy")
