"""Cluster membership: node labels, attested PCRs per result, node certificates, the
encrypted secret store, grants and the release audit.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=False), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("nodes") as nodes:
        nodes.add_column(sa.Column("labels", sa.JSON(), nullable=True))
    with op.batch_alter_table("results") as results:
        # The quoted PCR values ({"sha256": {"0": hex}}) of a result whose quote verified:
        # what secrets released under this result are sealed to.
        results.add_column(sa.Column("pcrs", sa.JSON(), nullable=True))
    op.create_table(
        "node_certificates",
        sa.Column("serial", sa.String(64), primary_key=True),
        sa.Column("node_id", sa.String(36), sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("result_id", sa.String(36), nullable=False),
        sa.Column("key_name", sa.String(140), nullable=False),
        _time("not_before"),
        _time("not_after"),
        _time("created_at"),
    )
    op.create_index("ix_node_certificates_node", "node_certificates", ["node_id", "created_at"])
    op.create_table(
        "secrets",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("kek_id", sa.String(32), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        _time("created_at"),
        _time("updated_at"),
    )
    op.create_table(
        "secret_grants",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "secret_name",
            sa.String(255),
            sa.ForeignKey("secrets.name", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("selector", sa.String(512), nullable=False),
        _time("created_at"),
    )
    op.create_index(
        "ix_secret_grants_secret_selector",
        "secret_grants",
        ["secret_name", "selector"],
        unique=True,
    )
    op.create_table(
        "secret_releases",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("secret_name", sa.String(255), nullable=False),
        sa.Column("secret_version", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(36), sa.ForeignKey("nodes.id"), nullable=False),
        sa.Column("result_id", sa.String(36), nullable=False),
        _time("time"),
    )
    op.create_index("ix_secret_releases_node", "secret_releases", ["node_id", "time"])


def downgrade() -> None:
    for table in ("secret_releases", "secret_grants", "secrets", "node_certificates"):
        op.drop_table(table)
    with op.batch_alter_table("results") as results:
        results.drop_column("pcrs")
    with op.batch_alter_table("nodes") as nodes:
        nodes.drop_column("labels")
