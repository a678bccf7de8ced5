"""Enrollment by a cloud vTPM's AK certificate (``stockade.evidence.ak_certificate``).

- ``enrollments.kind`` / ``nodes.identity_kind``: ``ek`` (the EK certificate and
  MakeCredential; every existing row) or ``ak-certificate``. For the latter ``ek_fingerprint``
  holds the sha256 of the certified AK's SubjectPublicKeyInfo and ``ek_public`` /
  ``ek_certificate`` are empty.
- ``ak_certificate``: the AK certificate (DER) of such an enrollment or node.
- ``instance``: the cloud instance the certificate names (GCE: zone, project, instance), and
  ``instance_key`` (``gce:<project number>/<instance id>``, indexed on nodes): one instance is
  one node, and a revoked instance stays revoked under its other AK (or its EK).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_TABLES = (("enrollments", "kind"), ("nodes", "identity_kind"))


def upgrade() -> None:
    # Plain ADD COLUMN (nullable, or with a constant default) on every backend: nothing is
    # copied, even on SQLite.
    for table_name, kind in _TABLES:
        op.add_column(
            table_name, sa.Column(kind, sa.String(16), nullable=False, server_default="ek")
        )
        op.add_column(table_name, sa.Column("ak_certificate", sa.LargeBinary(), nullable=True))
        op.add_column(table_name, sa.Column("instance", sa.JSON(), nullable=True))
        op.add_column(table_name, sa.Column("instance_key", sa.String(80), nullable=True))
    op.create_index("ix_nodes_instance_key", "nodes", ["instance_key"])


def downgrade() -> None:
    op.drop_index("ix_nodes_instance_key", "nodes")
    for table_name, kind in _TABLES:
        with op.batch_alter_table(table_name) as table:
            table.drop_column("instance_key")
            table.drop_column("instance")
            table.drop_column("ak_certificate")
            table.drop_column(kind)
