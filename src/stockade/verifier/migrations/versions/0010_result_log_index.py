"""Each result remembers its entry in the transparency log.

Revision ID: 0010
Revises: 0009

Results are stored in batches whose entries are appended to the log in the same transaction
(``stockade.verifier.committer``), so the entry's index is known when the result is written.
Results stored before this migration have none (``NULL``); their entries are in the log.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("log_index", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("log_index")
