"""Transparency log: leaves, complete subtree hashes and the one-row log state
(``stockade.translog.store``; the tables match its ``metadata``).

Revision ID: 0004
Revises: 0003

``stockade.translog.store.create_tables`` makes the same tables for tools and benchmarks,
so a table that already exists is left as it is, and the state row is added only when
missing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "translog_leaves" not in existing:
        _create_leaves()
    if "translog_subtrees" not in existing:
        _create_subtrees()
    if "translog_state" not in existing:
        op.create_table(
            "translog_state",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
            sa.Column("size", sa.BigInteger(), nullable=False),
        )
    state = sa.table(
        "translog_state", sa.column("id", sa.Integer()), sa.column("size", sa.BigInteger())
    )
    bind = op.get_bind()
    if bind.execute(sa.select(state.c.id).where(state.c.id == 1)).first() is None:
        op.bulk_insert(state, [{"id": 1, "size": 0}])


def _create_leaves() -> None:
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


def _create_subtrees() -> None:
    op.create_table(
        "translog_subtrees",
        sa.Column("level", sa.SmallInteger(), primary_key=True, autoincrement=False),
        sa.Column("node_index", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("translog_state")
    op.drop_table("translog_subtrees")
    op.drop_table("translog_leaves")
