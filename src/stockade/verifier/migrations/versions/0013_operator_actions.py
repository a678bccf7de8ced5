"""Every operator action is recorded and logged (issue 18: who acted).

Revision ID: 0013
Revises: 0012

``operator_actions``: one row per operator action (node revoke/allow/approve/replace/labels,
policy store/activate/delete, secret put/grant/revoke/delete/rekey), naming the operator
credential, the action, its subject (never a secret value), a bounded detail and the index
of its ``operator-action`` entry in the transparency log. Databases from before hold no
actions: those were only written to the verifier's own log lines.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operator_actions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=False), nullable=False),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("log_index", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("log_index", name="uq_operator_actions_log_index"),
    )
    op.create_index("ix_operator_actions_time", "operator_actions", ["time"])
    op.create_index("ix_operator_actions_actor", "operator_actions", ["actor"])


def downgrade() -> None:
    op.drop_index("ix_operator_actions_actor", table_name="operator_actions")
    op.drop_index("ix_operator_actions_time", table_name="operator_actions")
    op.drop_table("operator_actions")
