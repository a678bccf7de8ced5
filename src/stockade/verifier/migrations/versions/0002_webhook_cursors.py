"""Webhook cursors: the last event id each webhook URL acknowledged.

Revision ID: 0002
Revises: 0001

Databases a verifier created before this revision may already hold the table (the
webhook worker made it itself), so it is created only when missing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("webhook_cursors"):
        return
    op.create_table(
        "webhook_cursors",
        sa.Column("url", sa.String(2048), primary_key=True),
        sa.Column("last_event_id", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("webhook_cursors")
