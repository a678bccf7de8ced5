"""Initial schema: nodes, enrollments, nonces, results, events, policies.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=False), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("ek_fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("ek_public", sa.LargeBinary(), nullable=False),
        sa.Column("ek_certificate", sa.LargeBinary(), nullable=False),
        sa.Column("ak_public", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("allowed", sa.Boolean(), nullable=False),
        sa.Column("last_reset_count", sa.BigInteger(), nullable=True),
        sa.Column("last_restart_count", sa.BigInteger(), nullable=True),
        sa.Column("last_clock", sa.BigInteger(), nullable=True),
        sa.Column("last_clock_safe", sa.Boolean(), nullable=True),
        _time("trusted_until", nullable=True),
        sa.Column("latest_result_id", sa.String(36), nullable=True),
        _time("created_at"),
        _time("updated_at"),
    )
    op.create_index("ix_nodes_state", "nodes", ["state"])
    op.create_table(
        "enrollments",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("ek_fingerprint", sa.String(64), nullable=False),
        sa.Column("ek_public", sa.LargeBinary(), nullable=False),
        sa.Column("ek_certificate", sa.LargeBinary(), nullable=False),
        sa.Column("ak_public", sa.LargeBinary(), nullable=False),
        sa.Column("secret_sha256", sa.LargeBinary(), nullable=False),
        _time("expires_at"),
        sa.Column("used", sa.Boolean(), nullable=False),
        _time("created_at"),
    )
    op.create_index("ix_enrollments_ek_fingerprint", "enrollments", ["ek_fingerprint"])
    op.create_table(
        "nonces",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("node_id", sa.String(36), sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        _time("expires_at"),
        sa.Column("used", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_nonces_expires_at", "nonces", ["expires_at"])
    op.create_index("ix_nonces_node_value", "nonces", ["node_id", "value"], unique=True)
    op.create_table(
        "results",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("node_id", sa.String(36), sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ear", sa.Text(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("policy_ref", sa.String(255), nullable=False),
        _time("not_after"),
        _time("created_at"),
    )
    op.create_index("ix_results_node_created", "results", ["node_id", "created_at"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("node_id", sa.String(36), sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("from_state", sa.String(16), nullable=True),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("result_id", sa.String(36), nullable=True),
        _time("time"),
    )
    op.create_index("ix_events_node_id", "events", ["node_id"])
    op.create_table(
        "policies",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("document", sa.JSON(), nullable=False),
        _time("created_at"),
    )


def downgrade() -> None:
    for table in ("policies", "events", "results", "nonces", "enrollments", "nodes"):
        op.drop_table(table)
