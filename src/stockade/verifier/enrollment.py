"""Enrollment: EK certificate chain, AK checks, MakeCredential, then activation.

Only a TPM holding the certified EK can recover the secret, and only for the
named AK, so a correct activation binds the AK to that EK.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, update

from stockade.evidence.credential import make_credential
from stockade.evidence.ek_certificate import validate_ek_certificate
from stockade.evidence.errors import EvidenceError
from stockade.evidence.public import TpmPublic
from stockade.evidence.quote import check_ak
from stockade.verifier.errors import BadRequest, Conflict, Forbidden, NotFound
from stockade.verifier.events import record_event
from stockade.verifier.models import Enrollment, Node
from stockade.verifier.service import service_of
from stockade.verifier.states import NodeState, transition
from stockade.verifier.wire import decode_b64, encode_b64, rfc3339

router = APIRouter(tags=["enrollment"])

SECRET_BYTES = 32
MAX_NAME = 255


class EnrollmentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    ek_certificate: str = Field(description="base64 DER")
    ek_public: str = Field(description="base64 TPM2B_PUBLIC")
    ak_public: str = Field(description="base64 TPM2B_PUBLIC")


class EnrollmentChallenge(BaseModel):
    enrollment_id: str
    credential_blob: str
    encrypted_secret: str
    expires_at: str


class ActivationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    secret: str = Field(description="base64 secret recovered with TPM2_ActivateCredential")


class ActivationResponse(BaseModel):
    node_id: str
    name: str
    state: str


def ek_fingerprint(ek: TpmPublic) -> str:
    """sha256 of the EK's TPM2B_PUBLIC bytes, hex: a node's identity."""
    return hashlib.sha256(ek.marshal_tpm2b()).hexdigest()


def _public(data: bytes, field: str) -> TpmPublic:
    try:
        return TpmPublic.unmarshal_tpm2b(data)
    except EvidenceError as error:
        raise BadRequest(f"{field}: {error}", code="malformed") from None


@router.post("/v1/enrollments", status_code=201, response_model=EnrollmentChallenge)
def start_enrollment(body: EnrollmentRequest, request: Request) -> EnrollmentChallenge:
    service = service_of(request)
    config = service.config
    now = service.now()
    certificate = decode_b64(body.ek_certificate, "ek_certificate")
    ek_bytes = decode_b64(body.ek_public, "ek_public")
    ak_bytes = decode_b64(body.ak_public, "ak_public")
    ek = _public(ek_bytes, "ek_public")
    ak = _public(ak_bytes, "ak_public")
    try:
        validate_ek_certificate(
            certificate,
            ek,
            trusted_roots=config.ek_roots,
            intermediates=config.ek_intermediates,
            now=now,
        )
    except EvidenceError as error:
        raise Forbidden(f"EK certificate refused: {error}", code="ek-certificate") from None
    try:
        check_ak(ak)
    except EvidenceError as error:
        raise BadRequest(f"ak_public: {error}", code="attestation-key") from None
    fingerprint = ek_fingerprint(ek)
    if config.ek_allowlist is not None and fingerprint not in config.ek_allowlist:
        raise Forbidden(f"EK {fingerprint} is not on the allowlist", code="allowlist")
    secret = os.urandom(SECRET_BYTES)
    try:
        blob = make_credential(ek, ak.name(), secret)
    except EvidenceError as error:
        raise BadRequest(f"ek_public: {error}", code="malformed") from None
    expires_at = now + timedelta(seconds=config.enrollment_ttl_seconds)
    enrollment_id = str(uuid.uuid4())
    with service.transaction() as session:
        known = session.scalars(select(Node).where(Node.ek_fingerprint == fingerprint)).first()
        if known is not None and known.revoked:
            raise Forbidden(f"node {known.id} is revoked", code="revoked")
        session.add(
            Enrollment(
                id=enrollment_id,
                name=body.name,
                ek_fingerprint=fingerprint,
                ek_public=ek.marshal_tpm2b(),
                ek_certificate=certificate,
                ak_public=ak.marshal_tpm2b(),
                secret_sha256=hashlib.sha256(secret).digest(),
                expires_at=expires_at,
                used=False,
                created_at=now,
            )
        )
    return EnrollmentChallenge(
        enrollment_id=enrollment_id,
        credential_blob=encode_b64(blob.credential_blob),
        encrypted_secret=encode_b64(blob.encrypted_secret),
        expires_at=rfc3339(expires_at),
    )


@router.post("/v1/enrollments/{enrollment_id}/activation", response_model=ActivationResponse)
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
        consumed = session.execute(
            update(Enrollment)
            .where(
                Enrollment.id == enrollment_id,
                Enrollment.used.is_(False),
                Enrollment.expires_at > now,
            )
            .values(used=True)
            .execution_options(synchronize_session=False)
        ).rowcount
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
            "the secret does not match: the AK is not resident in the EK's TPM", code="activation"
        )

    with service.transaction() as session:
        node = session.scalars(
            select(Node).where(Node.ek_fingerprint == enrollment.ek_fingerprint).with_for_update()
        ).first()
        if node is None:
            node = Node(
                id=str(uuid.uuid4()),
                name=enrollment.name,
                ek_fingerprint=enrollment.ek_fingerprint,
                ek_public=enrollment.ek_public,
                ek_certificate=enrollment.ek_certificate,
                ak_public=enrollment.ak_public,
                state=NodeState.ENROLLED,
                revoked=False,
                allowed=True,
                created_at=now,
                updated_at=now,
            )
            session.add(node)
            session.flush()
            record_event(session, node, None, NodeState.ENROLLED, "enrolled", now)
        else:
            if node.revoked:
                raise Forbidden(f"node {node.id} is revoked", code="revoked")
            # Same TPM, new AK (a reinstall): keep identity and history, forget earlier trust.
            node.name = enrollment.name
            node.ak_public = enrollment.ak_public
            node.ek_certificate = enrollment.ek_certificate
            node.trusted_until = None
            transition(session, node, NodeState.ENROLLED, "re-enrolled", now)
            node.updated_at = now
        return ActivationResponse(node_id=node.id, name=node.name, state=node.state)
