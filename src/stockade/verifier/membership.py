"""Cluster membership: node certificates for TPM-resident keys, and signed node status.

A certificate is issued only to a node in good standing (latest result affirming and fresh),
for a key the node's AK certified (TPM2_Certify over a single-use nonce) to live in its TPM,
and it expires with that result.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import jwt
from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import insert

from stockade.cluster.names import InvalidNodeName
from stockade.cluster.status import STATUS_TYPE, status_claims
from stockade.evidence.certify import CertifyRejected, verify_certify
from stockade.evidence.errors import EvidenceError
from stockade.evidence.public import TpmPublic
from stockade.verifier.errors import BadRequest, Forbidden
from stockade.verifier.models import NodeCertificate
from stockade.verifier.node_auth import require_node_spending_a_nonce
from stockade.verifier.nonces import consume_nonce
from stockade.verifier.service import service_of
from stockade.verifier.standing import node_standing
from stockade.verifier.wire import decode_b64, rfc3339

router = APIRouter(tags=["membership"])

NodeId = Annotated[str, Path(max_length=64)]
# Tolerated clock skew between the verifier and relying parties at the start of validity.
NOT_BEFORE_SKEW = timedelta(seconds=60)


class CertificateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nonce: str = Field(description="base64, from POST /v1/nodes/{id}/nonces")
    key_public: str = Field(description="base64 TPM2B_PUBLIC of the TPM-resident key")
    certify_info: str = Field(description="base64 TPMS_ATTEST from TPM2_Certify by the AK")
    signature: str = Field(description="base64 TPMT_SIGNATURE over certify_info")


class CertificateResponse(BaseModel):
    node_id: str
    result_id: str
    serial: str
    not_before: str
    not_after: str
    certificate: str = Field(description="PEM")
    ca_bundle: str = Field(description="PEM: the cluster CA")


@router.post(
    "/v1/nodes/{node_id}/certificates",
    status_code=201,
    response_model=CertificateResponse,
    dependencies=[Depends(require_node_spending_a_nonce)],
)
def issue_certificate(
    node_id: NodeId, body: CertificateRequest, request: Request
) -> CertificateResponse:
    service = service_of(request)
    nonce = decode_b64(body.nonce, "nonce")
    certify_info = decode_b64(body.certify_info, "certify_info")
    signature = decode_b64(body.signature, "signature")
    try:
        key_public = TpmPublic.unmarshal_tpm2b(decode_b64(body.key_public, "key_public"))
    except EvidenceError as error:
        raise BadRequest(f"key_public: {error}", code="malformed") from None
    now = service.now()
    # Spent first, in its own transaction: a refused request does not leave it reusable.
    with service.engine.begin() as connection:
        consume_nonce(connection, node_id, nonce, now)
    with service.engine.connect() as connection:
        standing = node_standing(connection, node_id, now)
    standing.require_good(now, "certificate")
    assert standing.result_id is not None and standing.not_after is not None
    try:
        ak = TpmPublic.unmarshal_tpm2b(standing.ak_public)
        certified = verify_certify(ak, key_public, certify_info, signature, nonce)
    except (CertifyRejected, EvidenceError) as error:
        raise Forbidden(
            f"the key is not proven resident in node {standing.name}'s TPM: {error}",
            code="certify",
        ) from None
    boot = (certified.clock.reset_count, certified.clock.restart_count)
    if boot != standing.boot:
        # The TPM restarted since the attested quote: whatever runs now was never appraised.
        raise Forbidden(
            f"node {standing.name} certified its key in another boot than the one it attested "
            f"(resetCount/restartCount {boot[0]}/{boot[1]}, attested "
            f"{'none' if standing.boot is None else '/'.join(map(str, standing.boot))}): "
            "attest again",
            code="certify",
        )
    not_before = now - NOT_BEFORE_SKEW
    try:
        certificate = service.cluster_ca.issue_node_certificate(
            key_public,
            node_id=standing.node_id,
            node_name=standing.name,
            result_id=standing.result_id,
            not_before=not_before,
            not_after=standing.not_after,
        )
    except InvalidNodeName as error:
        # A name enrolled before names were checked: it cannot be certified, never a 500.
        raise Forbidden(str(error), code="node-name") from None
    serial = format(certificate.serial_number, "x")
    with service.engine.begin() as connection:
        connection.execute(
            insert(NodeCertificate).values(
                serial=serial,
                node_id=standing.node_id,
                result_id=standing.result_id,
                key_name=key_public.name().hex(),
                not_before=not_before,
                not_after=standing.not_after,
                created_at=now,
            )
        )
    return CertificateResponse(
        node_id=standing.node_id,
        result_id=standing.result_id,
        serial=serial,
        not_before=rfc3339(not_before),
        not_after=rfc3339(standing.not_after),
        certificate=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        ca_bundle=service.cluster_ca.bundle_pem().decode(),
    )


@router.get("/v1/nodes/{node_id}/status")
def node_status(node_id: NodeId, request: Request) -> dict[str, Any]:
    """A signed, short-lived statement of the node's standing (verify with /v1/keys)."""
    service = service_of(request)
    now = service.issuing_now()
    with service.engine.connect() as connection:
        standing = node_standing(connection, node_id, now)
    problem = standing.problem(now)
    trusted = problem is None
    expires = now + timedelta(seconds=service.config.status_validity_seconds)
    if trusted and standing.not_after is not None:
        expires = min(expires, standing.not_after)
    claims = status_claims(
        node_id=standing.node_id,
        name=standing.name,
        state=standing.state,
        trusted=trusted,
        result_id=standing.result_id,
        trusted_until=standing.not_after if trusted else None,
        issued_at=now,
        expires_at=expires,
    )
    key = service.signing_key
    token = jwt.encode(
        claims, key.private_key, algorithm="ES256", headers={"kid": key.kid, "typ": STATUS_TYPE}
    )
    return {
        "node_id": standing.node_id,
        "name": standing.name,
        "state": standing.state,
        "trusted": trusted,
        "reason": problem,
        "result_id": standing.result_id,
        "trusted_until": rfc3339(standing.not_after) if trusted and standing.not_after else None,
        "expires_at": rfc3339(expires),
        "statement": token,
    }
