"""An index on ``results.log_index``: auditors page through results by it.

Revision ID: 0014
Revises: 0013

``GET /v1/results`` (``stockade audit results``) pages by log index, the cursor that commits
in log order; without an index each page sorts the whole table. A result's index is unique
(one log entry each), but results stored before 0010 have none (NULL), so the index is not
declared unique.
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_results_log_index", "results", ["log_index"])


def downgrade() -> None:
    op.drop_index("ix_results_log_index", table_name="results")
