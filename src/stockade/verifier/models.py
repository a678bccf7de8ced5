"""The verifier's tables (typed SQLAlchemy 2 ORM). Schema changes go through migrations/."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC on every backend; always read back as an aware UTC datetime."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Node(Base):
    """A node *is* its TPM's endorsement key: ``ek_fingerprint`` is the sha256 (hex) of that
    key's SubjectPublicKeyInfo DER as its EK certificate certifies it (one canonical form, so no
    re-encoding of the public area names another node). A name belongs to one node."""

    __tablename__ = "nodes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    ek_fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    ek_public: Mapped[bytes] = mapped_column(LargeBinary)
    ek_certificate: Mapped[bytes] = mapped_column(LargeBinary)
    ak_public: Mapped[bytes] = mapped_column(LargeBinary)
    state: Mapped[str] = mapped_column(String(16), index=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    allowed: Mapped[bool] = mapped_column(Boolean, default=True)
    last_reset_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_restart_count: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_clock: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_clock_safe: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    trusted_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    latest_result_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    labels: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    # The node channel: TPM2B_PUBLIC of a signing key in the node's TPM, certified by its AK at
    # activation (TPM2_Certify); every node call after enrollment is signed with it. None for
    # nodes enrolled before the channel existed: they must enroll again.
    channel_key_public: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # A pending node (enrollment mode ``approve``) waits for the operator until this time.
    pending_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # ``stockade nodes replace``: until this time, another EK may enroll under this node's name
    # and become this node (board swap); ``replace_ek`` optionally names that EK (identity,
    # certificate sha256 or ``serial:<hex>``).
    replace_until: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    replace_ek: Mapped[str | None] = mapped_column(String(80), nullable=True)
    # ``ek`` or ``ak-certificate`` (a cloud vTPM enrolled by its AK certificate: then
    # ``ek_fingerprint`` is the sha256 of the certified AK's SubjectPublicKeyInfo, ``ek_public``
    # and ``ek_certificate`` are empty, and ``instance`` is the cloud instance it names).
    identity_kind: Mapped[str] = mapped_column(String(16), default="ek", server_default="ek")
    ak_certificate: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    instance: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # ``gce:<project number>/<instance id>``: one cloud instance is one node.
    instance_key: Mapped[str | None] = mapped_column(String(80), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_nodes_name", "name", unique=True),)


class Enrollment(Base):
    __tablename__ = "enrollments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    ek_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    ek_public: Mapped[bytes] = mapped_column(LargeBinary)
    ek_certificate: Mapped[bytes] = mapped_column(LargeBinary)
    ak_public: Mapped[bytes] = mapped_column(LargeBinary)
    secret_sha256: Mapped[bytes] = mapped_column(LargeBinary)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime)
    used: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # ``ek`` (MakeCredential) or ``ak-certificate`` (a cloud AK certificate; see Node).
    kind: Mapped[str] = mapped_column(String(16), default="ek", server_default="ek")
    ak_certificate: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    instance: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    instance_key: Mapped[str | None] = mapped_column(String(80), nullable=True)


class Nonce(Base):
    __tablename__ = "nonces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    value: Mapped[bytes] = mapped_column(LargeBinary)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    used: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (Index("ix_nonces_node_value", "node_id", "value", unique=True),)


class Result(Base):
    __tablename__ = "results"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    status: Mapped[str] = mapped_column(String(16))
    ear: Mapped[str] = mapped_column(Text)
    reasons: Mapped[list[str]] = mapped_column(JSON)
    policy_ref: Mapped[str] = mapped_column(String(255))
    not_after: Mapped[datetime] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    # The quoted PCR values when the quote verified ({"sha256": {"0": hex}}): secrets released
    # under this result are sealed to exactly these.
    pcrs: Mapped[dict[str, dict[str, str]] | None] = mapped_column(JSON, nullable=True)
    quote: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    quote_signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # The result's entry in the transparency log (NULL for results stored before 0010).
    log_index: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The release the quoted boot matched (rollout inventory, 0012): the signed manifest's
    # name, version, security version and digest (sha256 hex of its canonical form); a UKI
    # on a captured platform has its name only. NULL when the boot matched no release, and
    # for results stored before 0012.
    release_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    release_version: Mapped[str | None] = mapped_column(String(128), nullable=True)
    release_security_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    release_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The boot evidence the result was appraised from (0015): the sha256 (hex) of the event
    # log and of the release envelope the node sent, each an ``evidence_blobs`` row. NULL
    # for results stored before 0015, and the envelope's when none was sent.
    event_log_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    release_envelope_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (
        Index("ix_results_node_created", "node_id", "created_at"),
        Index("ix_results_log_index", "log_index"),
    )


class EvidenceBlob(Base):
    """Evidence a node sent, content-addressed (0015): ``digest`` is the sha256 (hex) of
    ``body``, ``kind`` ``event-log`` or ``release-envelope``. Written insert-if-absent in the
    transaction of the result that names it (``attestation.store_blobs``), so identical logs
    are stored once; never changed afterwards. Bounded by the evidence request's own limits
    (the body limit; ``appraise.MAX_RELEASE_ENVELOPE``)."""

    __tablename__ = "evidence_blobs"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    body: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    result_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime)
    # Who caused the transition: an operator credential's name, or None for the node's own
    # evidence and the verifier's sweeper.
    actor: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # The event's place in the stream and the public event id: given after commit, in the
    # order events become visible (events.sequence_events). Ids are allocated before commit
    # and commit out of order, so a cursor over ``id`` would skip late commits.
    position: Mapped[int | None] = mapped_column(BigInteger, nullable=True)

    __table_args__ = (Index("ix_events_position", "position", unique=True),)


class ChannelReplay(Base):
    """Node-channel signature nonces already used, until their signatures would be stale anyway:
    shared by every verifier replica and kept across restarts, so a captured request is
    accepted once in all."""

    __tablename__ = "channel_replays"

    node_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class SecurityEvent(Base):
    """Something that proved nothing and so changed nothing else: a refused enrollment, a
    request whose signature failed, evidence that did not verify. Rate-limited per kind and
    subject: ``count`` folds in the occurrences not stored separately."""

    __tablename__ = "security_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    node_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    name: Mapped[str | None] = mapped_column(String(255), nullable=True)
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str] = mapped_column(Text)
    count: Mapped[int] = mapped_column(Integer, default=1)


class Policy(Base):
    __tablename__ = "policies"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class PolicyActivation(Base):
    """The one policy id nodes are appraised under (``stockade policy activate``); its newest
    version applies. One row (``singleton`` 1) every replica reads."""

    __tablename__ = "active_policy"
    __table_args__ = (CheckConstraint("singleton = 1", name="ck_active_policy_singleton"),)

    singleton: Mapped[int] = mapped_column(Integer, primary_key=True)
    policy_id: Mapped[str] = mapped_column(String(255))
    activated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class NodeCertificate(Base):
    __tablename__ = "node_certificates"

    serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    result_id: Mapped[str] = mapped_column(String(36))
    key_name: Mapped[str] = mapped_column(String(140))
    not_before: Mapped[datetime] = mapped_column(UtcDateTime)
    not_after: Mapped[datetime] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_node_certificates_node", "node_id", "created_at"),)


class Secret(Base):
    """A secret, AES-256-GCM encrypted under the key-encryption key named by ``kek_id``."""

    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    kek_id: Mapped[str] = mapped_column(String(32))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class SecretGrant(Base):
    """Which nodes may receive a secret: ``node:<name or id>`` or ``label:<key>=<value>``."""

    __tablename__ = "secret_grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    secret_name: Mapped[str] = mapped_column(ForeignKey("secrets.name", ondelete="CASCADE"))
    selector: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_secret_grants_secret_selector", "secret_name", "selector", unique=True),
    )


class SecretRelease(Base):
    """The audit of releases: which version went to which node under which result."""

    __tablename__ = "secret_releases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    secret_name: Mapped[str] = mapped_column(String(255))
    secret_version: Mapped[int] = mapped_column(Integer)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    result_id: Mapped[str] = mapped_column(String(36))
    time: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_secret_releases_node", "node_id", "time"),)


class ExecutionStateRow(Base):
    """The verifier's running view of a node's execution log (appraisal.executions state)."""

    __tablename__ = "execution_states"

    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"), primary_key=True)
    state: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Execution(Base):
    """One appraised execution-log record, with the result whose quote proved it."""

    __tablename__ = "executions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.id"))
    reset_count: Mapped[int] = mapped_column(BigInteger)
    restart_count: Mapped[int] = mapped_column(BigInteger)
    recnum: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(32))
    container_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    image_reference: Mapped[str | None] = mapped_column(String(512), nullable=True)
    manifest_digest: Mapped[str | None] = mapped_column(String(80), nullable=True)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    cel: Mapped[bytes] = mapped_column(LargeBinary)
    result_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index(
            "ix_executions_node_boot_recnum",
            "node_id",
            "reset_count",
            "restart_count",
            "recnum",
            unique=True,
        ),
        Index("ix_executions_created", "created_at"),
    )


class OperatorActionRow(Base):
    """One operator action (``stockade.verifier.operator_actions``): who (the operator
    credential's name), what (``node.revoke``, ``secret.put``, ...), on what (a node id, a
    policy ``id@version``, a secret's name: never a value), when, a bounded detail, and the
    index of its ``operator-action`` entry in the transparency log. Written in the action's
    own transaction; ``log_index`` is given under the log's write lock, so rows commit in
    its order (the audit pages by it)."""

    __tablename__ = "operator_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(255), index=True)
    action: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(512))
    detail: Mapped[str] = mapped_column(Text)
    log_index: Mapped[int] = mapped_column(BigInteger, unique=True)
