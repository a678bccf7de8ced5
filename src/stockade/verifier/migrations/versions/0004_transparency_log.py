"""Transparency log: leaves, complete subtree hashes and the one-row log state
(``stockade.translog.store``; the tables match its ``metadata``).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "translog_leaves",
        # INTEGER PRIMARY KEY is SQLite's rowid: the leaves are the table's own b-tree.
        sa.Column(
            "leaf_index",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=False,
        ),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
    )
    op.create_table(
        "translog_subtrees",
        sa.Column("level", sa.SmallInteger(), primary_key=True, autoincrement=False),
        sa.Column("node_index", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sqlite_with_rowid=False,
    )
    state = op.create_table(
        "translog_state",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(state, [{"id": 1, "size": 0}])


def downgrade() -> None:
    op.drop_table("translog_state")
    op.drop_table("translog_subtrees")
    op.drop_table("translog_leaves")
