"""Each result records the release the node booted (rollout inventory).

Revision ID: 0012
Revises: 0011

The appraisal already knows which signed release the quoted boot matched; the result keeps
its name, version, security version and manifest digest, so the fleet's rollout is one
query over the nodes' latest results (``GET /v1/releases/status``). Results stored before
this migration, and results whose boot matched no release, have none (``NULL``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("release_name", sa.String(128), nullable=True))
        batch.add_column(sa.Column("release_version", sa.String(128), nullable=True))
        batch.add_column(sa.Column("release_security_version", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("release_digest", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("release_digest")
        batch.drop_column("release_security_version")
        batch.drop_column("release_version")
        batch.drop_column("release_name")
