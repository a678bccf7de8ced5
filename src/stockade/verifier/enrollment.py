"""Enrollment: who a node is, and whether it may be one.

A node *is* its EK: the identity is the sha256 of the EK's SubjectPublicKeyInfo as its
certificate certifies it (``stockade.evidence.ek_identity``), and the public area must be a TCG
EK template holding that key, so no re-encoding makes one TPM two nodes or lifts a revocation.
MakeCredential then proves the AK lives in that TPM (only it can recover the secret, and only
for that AK Name); at activation the AK certifies the node's channel key (TPM2_Certify over a
digest of the secret), which signs every later call (``stockade.verifier.node_auth``).

A name belongs to one EK: enrolling under a name another EK holds is refused (409) and
recorded; moving a name to new hardware is the operator's ``stockade nodes replace``. A new EK
is admitted by the enrollment mode: ``approve`` (it waits as ``pending``), ``allowlist``, or
``open``.

A cloud vTPM (GCE) may enroll by its AK certificate instead (``ak_certificate``; only with
``--ak-ca`` roots, which are never the EK roots): the certificate vouches that the AK is the
vTPM's (``stockade.evidence.ak_certificate``), so there is no MakeCredential; the verifier
returns a fresh random challenge and the AK certifies the channel key over it at activation,
exactly as over a recovered secret. The node *is* the certified AK (sha256 of its
SubjectPublicKeyInfo), and the instance the certificate names is kept on the node; a revoked
instance stays revoked under its other AK too.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stockade.channel import channel_certify_nonce
from stockade.cluster.names import InvalidNodeName, validate_node_name
from stockade.evidence.ak_certificate import (
    GceInstance,
    gce_instance,
    load_ak_certificate,
    validate_ak_certificate,
)
from stockade.evidence.algorithms import Alg
from stockade.evidence.certify import CertifyRejected, verify_certify
from stockade.evidence.credential import make_credential
from stockade.evidence.ek_certificate import validate_ek_certificate
from stockade.evidence.ek_identity import check_ek_template, ek_identity
from stockade.evidence.errors import EvidenceError
from stockade.evidence.public import TpmPublic
from stockade.evidence.quote import check_ak
from stockade.verifier.config import EnrollmentMode
from stockade.verifier.db import rows_changed
from stockade.verifier.errors import BadRequest, Conflict, Forbidden, NotFound
from stockade.verifier.events import record_event
from stockade.verifier.models import Enrollment, ExecutionStateRow, Node
from stockade.verifier.rate_limit import client_address, limit_enrollment
from stockade.verifier.security_events import record_security_event
from stockade.verifier.service import Service, service_of
from stockade.verifier.states import NodeState, transition
from stockade.verifier.wire import decode_b64, encode_b64, rfc3339

router = APIRouter(tags=["enrollment"])

SECRET_BYTES = 32
MAX_NAME = 255
MAX_AK_INTERMEDIATES = 4
EK = "ek"
AK_CERTIFICATE = "ak-certificate"


class EnrollmentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME)
    ek_certificate: str | None = Field(default=None, max_length=16384, description="base64 DER")
    ek_public: str | None = Field(default=None, max_length=2048, description="base64 TPM2B_PUBLIC")
    ak_public: str = Field(max_length=2048, description="base64 TPM2B_PUBLIC")
    ak_certificate: str | None = Field(
        default=None,
        max_length=16384,
        description="base64 DER: a cloud vTPM's AK certificate, instead of the EK's",
    )
    ak_intermediates: list[Annotated[str, Field(max_length=16384)]] = Field(
        default_factory=list,
        max_length=MAX_AK_INTERMEDIATES,
        description="base64 DER CA certificates between the AK certificate and an --ak-ca root",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_credential(cls, data: Any) -> Any:
        if isinstance(data, dict) and "ek_certificate" not in data and "ak_certificate" not in data:
            raise ValueError("ek_certificate (with ek_public) or ak_certificate is required")
        return data


class EnrollmentChallenge(BaseModel):
    enrollment_id: str
    # ``ek``: the MakeCredential blob. ``ak-certificate``: ``challenge``, the nonce the AK
    # certifies the channel key over.
    kind: str = EK
    credential_blob: str | None = None
    encrypted_secret: str | None = None
    challenge: str | None = None
    expires_at: str


class ActivationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secret: str = Field(
        max_length=256, description="base64 secret recovered with TPM2_ActivateCredential"
    )
    channel_key_public: str = Field(
        max_length=2048, description="base64 TPM2B_PUBLIC of the node's channel key"
    )
    channel_certify_info: str = Field(
        max_length=4096,
        description="base64 TPMS_ATTEST: TPM2_Certify of the channel key by the AK over "
        "SHA-256('stockade/v1 channel key' || 0x00 || enrollment_id || 0x00 || secret)",
    )
    channel_signature: str = Field(max_length=2048, description="base64 TPMT_SIGNATURE")


class ActivationResponse(BaseModel):
    node_id: str
    name: str
    state: str


def _public(data: bytes, field: str) -> TpmPublic:
    try:
        return TpmPublic.unmarshal_tpm2b(data)
    except EvidenceError as error:
        raise BadRequest(f"{field}: {error}", code="malformed") from None


def allowlist_keys(certificate: bytes, identity: str) -> set[str]:
    """The allowlist entries that name this EK: its identity, its certificate's sha256, and
    ``serial:<hex>`` of its certificate."""
    keys = {identity, hashlib.sha256(certificate).hexdigest()}
    with contextlib.suppress(ValueError):
        keys.add(f"serial:{x509.load_der_x509_certificate(certificate).serial_number:x}")
    return keys


def _naming_certificate(row: Enrollment | Node) -> bytes:
    """The certificate that names this enrollment or node: its EK's, or its AK's."""
    return row.ak_certificate or row.ek_certificate


def _admitted(service: Service, certificate: bytes, identity: str) -> None:
    config = service.config
    listed = config.ek_allowlist
    if config.enrollment_mode is EnrollmentMode.ALLOWLIST and listed is None:
        raise Forbidden("enrollment mode allowlist has no allowlist configured", code="allowlist")
    if listed is not None and not (allowlist_keys(certificate, identity) & listed):
        raise Forbidden(f"EK {identity} is not on the allowlist", code="allowlist")


def _replacement_open(holder: Node, identity: str, certificate: bytes, now: datetime) -> bool:
    """``stockade nodes replace`` armed ``holder``'s name for new hardware (and this EK)."""
    if holder.replace_until is None or holder.replace_until <= now:
        return False
    if holder.replace_ek is None:
        return True
    return holder.replace_ek in allowlist_keys(certificate, identity)


def _check_name(
    service: Service,
    session: Session,
    name: str,
    identity: str,
    certificate: bytes,
    now: datetime,
    source: str | None,
) -> None:
    """Refuse (409 ``name``, recorded) a name another EK holds, and a new name for an EK that
    is already a node under another one."""
    holder = session.scalars(select(Node).where(Node.name == name)).first()
    known = session.scalars(select(Node).where(Node.ek_fingerprint == identity)).first()
    if known is not None and known.name != name:
        record_security_event(
            service,
            "name-change",
            f"EK {identity} (node {known.id}, {known.name}) tried to enroll as {name!r}",
            node_id=known.id,
            name=name,
            source=source,
        )
        raise Conflict(
            f"this TPM is enrolled as {known.name!r}; enrolling it under another name is "
            "refused (an operator can remove or replace the node)",
            code="name",
        )
    if holder is not None and holder.ek_fingerprint != identity:
        if known is None and _replacement_open(holder, identity, certificate, now):
            return
        record_security_event(
            service,
            "name-taken",
            f"EK {identity} tried to enroll as {name!r}, which node {holder.id} holds",
            node_id=holder.id,
            name=name,
            source=source,
        )
        raise Conflict(
            f"the name {name!r} belongs to another TPM (node {holder.id}); moving it to new "
            "hardware is an operator's act: stockade nodes replace NAME",
            code="name",
        )


@dataclass(frozen=True)
class _Candidate:
    """Who is enrolling, once its certificate checked out."""

    kind: str
    identity: str
    certificate: bytes  # the EK's or the AK's: what allowlist entries name
    ek_public: bytes
    ak: TpmPublic
    instance: GceInstance | None = None


@router.post(
    "/v1/enrollments",
    status_code=201,
    response_model=EnrollmentChallenge,
    dependencies=[Depends(limit_enrollment)],
)
def start_enrollment(body: EnrollmentRequest, request: Request) -> EnrollmentChallenge:
    service = service_of(request)
    config = service.config
    now = service.now()
    try:
        name = validate_node_name(body.name)
    except InvalidNodeName as error:
        raise BadRequest(str(error), code="name") from None
    if body.ak_certificate is not None:
        candidate = _by_ak_certificate(service, body, now)
    else:
        candidate = _by_ek_certificate(service, body, now)
    _admitted(service, candidate.certificate, candidate.identity)
    secret = os.urandom(SECRET_BYTES)
    blob = None
    if candidate.kind == EK:
        try:
            blob = make_credential(
                TpmPublic.unmarshal_tpm2b(candidate.ek_public), candidate.ak.name(), secret
            )
        except EvidenceError as error:
            raise BadRequest(f"ek_public: {error}", code="malformed") from None
    expires_at = now + timedelta(seconds=config.enrollment_ttl_seconds)
    enrollment_id = str(uuid.uuid4())
    identity = candidate.identity
    with service.transaction() as session:
        known = session.scalars(select(Node).where(Node.ek_fingerprint == identity)).first()
        if known is not None and known.revoked:
            raise Forbidden(f"node {known.id} is revoked", code="revoked")
        if candidate.instance is not None:
            _check_instance(service, session, candidate.instance, identity, client_address(request))
        _check_name(
            service, session, name, identity, candidate.certificate, now, client_address(request)
        )
        session.add(
            Enrollment(
                id=enrollment_id,
                name=name,
                ek_fingerprint=identity,
                ek_public=candidate.ek_public,
                ek_certificate=candidate.certificate if candidate.kind == EK else b"",
                ak_public=candidate.ak.marshal_tpm2b(),
                secret_sha256=hashlib.sha256(secret).digest(),
                expires_at=expires_at,
                used=False,
                created_at=now,
                kind=candidate.kind,
                ak_certificate=candidate.certificate if candidate.kind != EK else None,
                instance=None if candidate.instance is None else candidate.instance.to_json(),
                instance_key=None if candidate.instance is None else candidate.instance.key,
            )
        )
    if blob is None:
        return EnrollmentChallenge(
            enrollment_id=enrollment_id,
            kind=AK_CERTIFICATE,
            challenge=encode_b64(secret),
            expires_at=rfc3339(expires_at),
        )
    return EnrollmentChallenge(
        enrollment_id=enrollment_id,
        credential_blob=encode_b64(blob.credential_blob),
        encrypted_secret=encode_b64(blob.encrypted_secret),
        expires_at=rfc3339(expires_at),
    )


def _by_ek_certificate(service: Service, body: EnrollmentRequest, now: datetime) -> _Candidate:
    """The EK certificate chains to an --ek-ca root and certifies a TCG EK; the AK is a
    restricted signing key (MakeCredential then proves it is in that TPM)."""
    config = service.config
    if body.ek_certificate is None or body.ek_public is None or body.ak_intermediates:
        raise BadRequest(
            "give ek_certificate and ek_public, or ak_certificate (and ak_intermediates)",
            code="malformed",
        )
    certificate = decode_b64(body.ek_certificate, "ek_certificate")
    ek_bytes = decode_b64(body.ek_public, "ek_public")
    ak_bytes = decode_b64(body.ak_public, "ak_public")
    ek = _public(ek_bytes, "ek_public")
    ak = _public(ak_bytes, "ak_public")
    try:
        validated = validate_ek_certificate(
            certificate,
            ek,
            trusted_roots=config.ek_roots,
            intermediates=config.ek_intermediates,
            now=now,
        )
        template = check_ek_template(ek)
        # A cloud vTPM's EK certificate names its instance too (GCE): one instance, one node.
        instance = gce_instance(validated.certificate)
    except EvidenceError as error:
        raise Forbidden(f"EK refused: {error}", code="ek-certificate") from None
    kind = "rsa" if template.type == Alg.RSA else "ecc"
    if config.ek_types is not None and kind not in config.ek_types:
        raise Forbidden(
            f"this verifier accepts {', '.join(sorted(config.ek_types))} EKs only, not the TPM's "
            f"{kind} EK ({template.name}): enroll with the other EK",
            code="ek-type",
        )
    try:
        check_ak(ak)
    except EvidenceError as error:
        raise BadRequest(f"ak_public: {error}", code="attestation-key") from None
    return _Candidate(EK, ek_identity(ek), certificate, ek.marshal_tpm2b(), ak, instance)


def _by_ak_certificate(service: Service, body: EnrollmentRequest, now: datetime) -> _Candidate:
    """The AK certificate chains to an --ak-ca root (never an EK root) and certifies exactly
    the presented AK, a restricted signing key."""
    config = service.config
    if body.ek_certificate is not None or body.ek_public is not None:
        raise BadRequest(
            "an enrollment by AK certificate carries no ek_certificate or ek_public",
            code="malformed",
        )
    if not config.ak_roots:
        raise Forbidden(
            "this verifier trusts no AK CA (verifier serve --ak-ca), so it enrolls no node by "
            "an AK certificate: enroll with the TPM's EK certificate",
            code="ak-ca",
        )
    assert body.ak_certificate is not None
    certificate = decode_b64(body.ak_certificate, "ak_certificate")
    sent = [
        decode_b64(text, f"ak_intermediates[{n}]") for n, text in enumerate(body.ak_intermediates)
    ]
    ak_bytes = decode_b64(body.ak_public, "ak_public")
    offered = []
    for number, der in enumerate(sent):
        try:
            offered.append(load_ak_certificate(der))
        except EvidenceError as error:
            raise BadRequest(f"ak_intermediates[{number}]: {error}", code="malformed") from None
    ak = _public(ak_bytes, "ak_public")
    try:
        check_ak(ak)
    except EvidenceError as error:
        raise BadRequest(f"ak_public: {error}", code="attestation-key") from None
    try:
        validated = validate_ak_certificate(
            certificate,
            ak,
            trusted_roots=config.ak_roots,
            intermediates=[*config.ak_intermediates, *offered],
            now=now,
        )
    except EvidenceError as error:
        raise Forbidden(f"AK certificate refused: {error}", code="ak-certificate") from None
    # Stored (and hashed by allowlist entries) as the certificate's DER, not the bytes sent.
    der = validated.certificate.public_bytes(serialization.Encoding.DER)
    return _Candidate(AK_CERTIFICATE, validated.identity, der, b"", ak, validated.instance)


def _check_instance(
    service: Service,
    session: Session,
    instance: GceInstance,
    identity: str,
    source: str | None,
) -> None:
    """One cloud instance is one node: it has an EK and an RSA and an ECC AK, each certified,
    so a revoked instance stays revoked under the others (403), and an instance another node
    already is cannot become a second node (409, recorded)."""
    other = session.scalars(
        select(Node).where(Node.instance_key == instance.key, Node.ek_fingerprint != identity)
    ).first()
    if other is None:
        return
    shown = f"{instance.project_id}/{instance.zone}/{instance.instance_name} ({instance.key})"
    if other.revoked:
        raise Forbidden(
            f"node {other.id} is revoked, and it is this instance {shown}", code="revoked"
        )
    record_security_event(
        service,
        "instance-taken",
        f"{identity} of instance {shown} tried to enroll, which node {other.id} already is",
        node_id=other.id,
        name=other.name,
        source=source,
    )
    raise Conflict(
        f"instance {shown} is already node {other.name!r} ({other.id}), by another key; an "
        "operator can remove that node first",
        code="instance",
    )


def _channel_key(body: ActivationRequest, enrollment: Enrollment, secret: bytes) -> bytes:
    """The channel key's TPM2B_PUBLIC, once the enrolled AK certified it over this enrollment."""
    key_public = _public(decode_b64(body.channel_key_public, "channel_key_public"), "channel key")
    try:
        verify_certify(
            TpmPublic.unmarshal_tpm2b(enrollment.ak_public),
            key_public,
            decode_b64(body.channel_certify_info, "channel_certify_info"),
            decode_b64(body.channel_signature, "channel_signature"),
            channel_certify_nonce(enrollment.id, secret),
        )
    except (CertifyRejected, EvidenceError) as error:
        raise Forbidden(
            f"the channel key is not proven resident in the enrolled TPM: {error}",
            code="certify",
        ) from None
    return key_public.marshal_tpm2b()


@router.post(
    "/v1/enrollments/{enrollment_id}/activation",
    response_model=ActivationResponse,
    dependencies=[Depends(limit_enrollment)],
)
def activate(
    enrollment_id: Annotated[str, Path(max_length=64)],
    body: ActivationRequest,
    request: Request,
) -> ActivationResponse:
    """One attempt per enrollment: a wrong secret uses it up too."""
    service = service_of(request)
    now = service.now()
    secret = decode_b64(body.secret, "secret")
    with service.transaction() as session:
        consumed = rows_changed(
            session.execute(
                update(Enrollment)
                .where(
                    Enrollment.id == enrollment_id,
                    Enrollment.used.is_(False),
                    Enrollment.expires_at > now,
                )
                .values(used=True)
                .execution_options(synchronize_session=False)
            )
        )
        enrollment = session.get(Enrollment, enrollment_id)
    if enrollment is None:
        raise NotFound(f"no enrollment {enrollment_id}", code="enrollment")
    if consumed != 1:
        raise Conflict(
            f"enrollment {enrollment_id} expired or was already used; start a new one",
            code="enrollment",
        )
    if not hmac.compare_digest(hashlib.sha256(secret).digest(), enrollment.secret_sha256):
        raise Forbidden(
            "the challenge does not match this enrollment's"
            if enrollment.kind == AK_CERTIFICATE
            else "the secret does not match: the AK is not resident in the EK's TPM",
            code="activation",
        )
    channel_key = _channel_key(body, enrollment, secret)
    try:
        with service.transaction() as session:
            node = _bind(service, session, enrollment, channel_key, now, client_address(request))
            return ActivationResponse(node_id=node.id, name=node.name, state=node.state)
    except IntegrityError:
        raise Conflict(
            f"the name {enrollment.name!r} was taken by another TPM meanwhile", code="name"
        ) from None


def _bind(
    service: Service,
    session: Session,
    enrollment: Enrollment,
    channel_key: bytes,
    now: datetime,
    source: str | None,
) -> Node:
    """The node this activated enrollment is: the EK's own, a replaced one, or a new one."""
    node = session.scalars(
        select(Node).where(Node.ek_fingerprint == enrollment.ek_fingerprint).with_for_update()
    ).first()
    if node is not None:
        if node.revoked:
            raise Forbidden(f"node {node.id} is revoked", code="revoked")
        if node.identity_kind != enrollment.kind:
            raise Conflict(
                f"node {node.id} enrolled by {node.identity_kind}, not {enrollment.kind}",
                code="identity",
            )
        if node.name != enrollment.name:
            raise Conflict(f"this TPM is enrolled as {node.name!r}", code="name")
        # Same TPM, new AK (a reinstall): keep identity and history, forget earlier trust.
        node.ak_public = enrollment.ak_public
        node.ek_certificate = enrollment.ek_certificate
        node.ak_certificate = enrollment.ak_certificate
        node.instance = enrollment.instance
        node.instance_key = enrollment.instance_key
        node.channel_key_public = channel_key
        node.trusted_until = None
        if node.state != NodeState.PENDING:
            transition(session, node, NodeState.ENROLLED, "re-enrolled", now)
        node.updated_at = now
        return node
    holder = session.scalars(
        select(Node).where(Node.name == enrollment.name).with_for_update()
    ).first()
    if holder is not None:
        certificate = _naming_certificate(enrollment)
        if not _replacement_open(holder, enrollment.ek_fingerprint, certificate, now):
            _check_name(
                service,
                session,
                enrollment.name,
                enrollment.ek_fingerprint,
                certificate,
                now,
                source,
            )
        return _replace(session, holder, enrollment, channel_key, now)
    pending = service.config.enrollment_mode is EnrollmentMode.APPROVE
    node = Node(
        id=str(uuid.uuid4()),
        name=enrollment.name,
        ek_fingerprint=enrollment.ek_fingerprint,
        ek_public=enrollment.ek_public,
        ek_certificate=enrollment.ek_certificate,
        ak_public=enrollment.ak_public,
        identity_kind=enrollment.kind,
        ak_certificate=enrollment.ak_certificate,
        instance=enrollment.instance,
        instance_key=enrollment.instance_key,
        channel_key_public=channel_key,
        state=NodeState.PENDING if pending else NodeState.ENROLLED,
        pending_until=(
            now + timedelta(seconds=service.config.pending_ttl_seconds) if pending else None
        ),
        revoked=False,
        allowed=not pending,
        created_at=now,
        updated_at=now,
    )
    session.add(node)
    session.flush()
    record_event(
        session,
        node,
        None,
        node.state,
        "enrolled; waiting for the operator's approval" if pending else "enrolled",
        now,
    )
    return node


def _replace(
    session: Session, node: Node, enrollment: Enrollment, channel_key: bytes, now: datetime
) -> Node:
    """Board swap: the node (id, history, grants, labels) is now the new TPM's."""
    previous = node.ek_fingerprint
    node.ek_fingerprint = enrollment.ek_fingerprint
    node.ek_public = enrollment.ek_public
    node.ek_certificate = enrollment.ek_certificate
    node.ak_public = enrollment.ak_public
    node.identity_kind = enrollment.kind
    node.ak_certificate = enrollment.ak_certificate
    node.instance = enrollment.instance
    node.instance_key = enrollment.instance_key
    node.channel_key_public = channel_key
    node.replace_until = None
    node.replace_ek = None
    node.pending_until = None
    node.allowed = True
    node.trusted_until = None
    node.latest_result_id = None
    node.last_clock = node.last_reset_count = node.last_restart_count = None
    node.last_clock_safe = None
    session.execute(delete(ExecutionStateRow).where(ExecutionStateRow.node_id == node.id))
    # Always an event, even from ``enrolled``: the hardware behind the node changed.
    before = node.state
    node.state = NodeState.ENROLLED
    node.updated_at = now
    record_event(
        session,
        node,
        before,
        NodeState.ENROLLED,
        f"replaced: EK {previous} -> {enrollment.ek_fingerprint}",
        now,
    )
    return node
