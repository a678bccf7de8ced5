"""Container executions: the appraised execution log per node and boot, each record with the
result (and so the quote) that proved it; the running PCR 13 state per node.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("results") as results:
        # The quote itself, kept for results that proved executions: auditors re-verify it.
        results.add_column(sa.Column("quote", sa.LargeBinary(), nullable=True))
        results.add_column(sa.Column("quote_signature", sa.LargeBinary(), nullable=True))
    op.create_table(
        "execution_states",
        sa.Column("node_id", sa.String(36), sa.ForeignKey("nodes.id"), primary_key=True),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=False), nullable=False),
    )
    op.create_table(
        "executions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("node_id", sa.String(36), sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("reset_count", sa.BigInteger(), nullable=False),
        sa.Column("restart_count", sa.BigInteger(), nullable=False),
        sa.Column("recnum", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("container_id", sa.String(255), nullable=True),
        sa.Column("image_reference", sa.String(512), nullable=True),
        sa.Column("manifest_digest", sa.String(80), nullable=True),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("cel", sa.LargeBinary(), nullable=False),
        sa.Column("result_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
    )
    op.create_index(
        "ix_executions_node_boot_recnum",
        "executions",
        ["node_id", "reset_count", "restart_count", "recnum"],
        unique=True,
    )
    op.create_index("ix_executions_created", "executions", ["created_at"])


def downgrade() -> None:
    op.drop_table("executions")
    op.drop_table("execution_states")
    with op.batch_alter_table("results") as results:
        results.drop_column("quote_signature")
        results.drop_column("quote")
