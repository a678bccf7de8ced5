"""Node identity rooted in the TPM: the canonical EK identity, unique names, the node channel
key, pending and replaced nodes, who acted, security events, and grants bound to node ids.

Data carried over:
- ``nodes.ek_fingerprint`` (and ``enrollments.ek_fingerprint``) become the sha256 of the EK's
  SubjectPublicKeyInfo. Nodes that were one TPM enrolled twice under re-encoded public areas
  (the revocation bypass) collapse onto the oldest: the others are revoked, with an event.
- Names become unique: the oldest node keeps a name, the others get ``<name>-<id prefix>``.
- ``node:<name>`` grants become ``node:<id>`` of the node holding that name; a grant naming no
  node is dropped (it could otherwise be captured by whoever takes the name later).
- Existing nodes have no channel key: their agents must enroll again (same EK, same name, so
  the same node, history kept).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

MAX_NAME = 52


def _identity(ek_public: bytes) -> str | None:
    from stockade.evidence.ek_identity import ek_identity
    from stockade.evidence.errors import EvidenceError
    from stockade.evidence.public import TpmPublic

    try:
        return ek_identity(TpmPublic.unmarshal_tpm2b(ek_public))
    except EvidenceError:
        return None


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


nodes = sa.table(
    "nodes",
    sa.column("id", sa.String),
    sa.column("name", sa.String),
    sa.column("ek_fingerprint", sa.String),
    sa.column("ek_public", sa.LargeBinary),
    sa.column("revoked", sa.Boolean),
    sa.column("allowed", sa.Boolean),
    sa.column("state", sa.String),
    sa.column("trusted_until", sa.DateTime),
    sa.column("created_at", sa.DateTime),
    sa.column("updated_at", sa.DateTime),
)
enrollments = sa.table(
    "enrollments",
    sa.column("id", sa.String),
    sa.column("ek_fingerprint", sa.String),
    sa.column("ek_public", sa.LargeBinary),
)
events = sa.table(
    "events",
    sa.column("node_id", sa.String),
    sa.column("name", sa.String),
    sa.column("from_state", sa.String),
    sa.column("to_state", sa.String),
    sa.column("reason", sa.Text),
    sa.column("result_id", sa.String),
    sa.column("time", sa.DateTime),
    sa.column("actor", sa.String),
)
grants = sa.table(
    "secret_grants",
    sa.column("id", sa.Integer),
    sa.column("selector", sa.String),
)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _canonical_identities(connection: sa.Connection) -> None:
    rows = connection.execute(
        sa.select(nodes.c.id, nodes.c.name, nodes.c.ek_public, nodes.c.state).order_by(
            nodes.c.created_at, nodes.c.id
        )
    ).all()
    owners: dict[str, str] = {}
    for row in rows:
        identity = _identity(row.ek_public)
        if identity is None or identity in owners:
            # Unparseable, or the same key as an older node: a second identity for one TPM.
            superseded = hashlib.sha256(f"superseded:{row.id}".encode()).hexdigest()
            reason = (
                f"migration: same EK as node {owners[identity]} (re-encoded public area)"
                if identity is not None
                else "migration: EK public area does not parse"
            )
            connection.execute(
                sa.update(nodes)
                .where(nodes.c.id == row.id)
                .values(
                    ek_fingerprint=superseded,
                    revoked=True,
                    allowed=False,
                    state="revoked",
                    trusted_until=None,
                    updated_at=_now(),
                )
            )
            connection.execute(
                sa.insert(events).values(
                    node_id=row.id,
                    name=row.name,
                    from_state=row.state,
                    to_state="revoked",
                    reason=reason,
                    result_id=None,
                    time=_now(),
                    actor="migration",
                )
            )
            continue
        owners[identity] = row.id
        connection.execute(
            sa.update(nodes).where(nodes.c.id == row.id).values(ek_fingerprint=identity)
        )
    for enrollment in connection.execute(
        sa.select(enrollments.c.id, enrollments.c.ek_public)
    ).all():
        identity = _identity(enrollment.ek_public)
        connection.execute(
            sa.update(enrollments)
            .where(enrollments.c.id == enrollment.id)
            .values(ek_fingerprint=identity or "0" * 64)
        )


def _unique_names(connection: sa.Connection) -> dict[str, str]:
    """Name -> id of the node that keeps it."""
    holders: dict[str, str] = {}
    rows = connection.execute(
        sa.select(nodes.c.id, nodes.c.name).order_by(nodes.c.created_at, nodes.c.id)
    ).all()
    taken = {row.name for row in rows}
    for row in rows:
        if row.name not in holders:
            holders[row.name] = row.id
            continue
        renamed = f"{row.name[: MAX_NAME - 9]}-{row.id[:8]}".lower()
        while renamed in taken:
            renamed = f"{renamed[: MAX_NAME - 5]}-{uuid.uuid4().hex[:4]}"
        taken.add(renamed)
        holders[renamed] = row.id
        connection.execute(sa.update(nodes).where(nodes.c.id == row.id).values(name=renamed))
    return holders


def _grants_by_id(connection: sa.Connection, holders: dict[str, str]) -> None:
    ids = set(holders.values())
    for grant in connection.execute(sa.select(grants.c.id, grants.c.selector)).all():
        if not grant.selector.startswith("node:"):
            continue
        key = grant.selector.removeprefix("node:")
        if key in ids:
            continue
        node_id = holders.get(key)
        if node_id is None or _is_uuid(key):
            connection.execute(sa.delete(grants).where(grants.c.id == grant.id))
            continue
        duplicate = connection.execute(
            sa.select(grants.c.id).where(grants.c.selector == f"node:{node_id}")
        ).first()
        connection.execute(
            sa.delete(grants).where(grants.c.id == grant.id)
            if duplicate is not None
            else sa.update(grants).where(grants.c.id == grant.id).values(selector=f"node:{node_id}")
        )


def upgrade() -> None:
    with op.batch_alter_table("nodes") as table:
        table.add_column(sa.Column("channel_key_public", sa.LargeBinary(), nullable=True))
        table.add_column(sa.Column("pending_until", sa.DateTime(timezone=False), nullable=True))
        table.add_column(sa.Column("replace_until", sa.DateTime(timezone=False), nullable=True))
        table.add_column(sa.Column("replace_ek", sa.String(80), nullable=True))
    with op.batch_alter_table("events") as table:
        table.add_column(sa.Column("actor", sa.String(255), nullable=True))
    op.create_table(
        "security_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=False), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("node_id", sa.String(64), nullable=True),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("source", sa.String(64), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
    )
    op.create_index("ix_security_events_time", "security_events", ["time"])
    op.create_table(
        "channel_replays",
        sa.Column("node_id", sa.String(64), primary_key=True),
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=False), nullable=False),
    )
    op.create_index("ix_channel_replays_expires_at", "channel_replays", ["expires_at"])
    connection = op.get_bind()
    _canonical_identities(connection)
    holders = _unique_names(connection)
    _grants_by_id(connection, holders)
    op.create_index("ix_nodes_name", "nodes", ["name"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_nodes_name", "nodes")
    op.drop_table("channel_replays")
    op.drop_table("security_events")
    with op.batch_alter_table("events") as table:
        table.drop_column("actor")
    with op.batch_alter_table("nodes") as table:
        table.drop_column("replace_ek")
        table.drop_column("replace_until")
        table.drop_column("pending_until")
        table.drop_column("channel_key_public")
