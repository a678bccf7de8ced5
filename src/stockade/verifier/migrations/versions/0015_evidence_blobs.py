"""Each result keeps the boot evidence it was appraised from (the dashboard's boot view).

Revision ID: 0015
Revises: 0014

``evidence_blobs``: the event logs (and release envelopes) nodes sent, content-addressed by
their sha256 (hex): a log sent again (every attestation of one boot sends the same log) is
stored once. ``results.event_log_digest`` and ``results.release_envelope_digest`` name the
blobs a result was appraised from; NULL for results stored before this migration (their
evidence was not kept) and, for the envelope, when none was sent.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evidence_blobs",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
    )
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("event_log_digest", sa.String(64), nullable=True))
        batch.add_column(sa.Column("release_envelope_digest", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("release_envelope_digest")
        batch.drop_column("event_log_digest")
    op.drop_table("evidence_blobs")
