"""Evidence: consume the nonce, appraise under the active policy, store and sign the result."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from stockade.evidence.attest import ClockInfo
from stockade.evidence.errors import EvidenceError
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.public import TpmPublic
from stockade.verifier.appraiser import Evidence, NodeView, Status
from stockade.verifier.errors import BadRequest, Forbidden, NotFound
from stockade.verifier.models import Node, Result
from stockade.verifier.nonces import consume_nonce
from stockade.verifier.results import AR4SI, TRUST_CLAIMS, ear_claims, sign_ear
from stockade.verifier.service import ActivePolicy, Service, service_of
from stockade.verifier.states import NodeState, transition
from stockade.verifier.wire import decode_b64, rfc3339

log = logging.getLogger(__name__)
router = APIRouter(tags=["attestation"])


class EvidenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nonce: str = Field(description="base64, as issued")
    quote: str = Field(description="base64 TPMS_ATTEST")
    signature: str = Field(description="base64 TPMT_SIGNATURE")
    pcrs: dict[str, dict[str, str]] = Field(description='{"sha256": {"0": hex, ...}}')
    event_log: str = Field(description="base64 binary_bios_measurements")
    execution_log: str | None = Field(default=None, description="base64 CEL (not yet appraised)")


class EvidenceResponse(BaseModel):
    result_id: str
    status: str
    ear: str
    not_after: str
    reasons: list[str]
    state: str


def _decode(body: EvidenceRequest) -> Evidence:
    try:
        pcrs = PcrValues.from_json(body.pcrs)
    except (EvidenceError, ValueError, KeyError, TypeError) as error:
        raise BadRequest(f"pcrs: {error}", code="malformed") from None
    return Evidence(
        nonce=decode_b64(body.nonce, "nonce"),
        quote=decode_b64(body.quote, "quote"),
        signature=decode_b64(body.signature, "signature"),
        pcrs=pcrs,
        event_log=decode_b64(body.event_log, "event_log"),
    )


def _last_clock(node: Node) -> ClockInfo | None:
    if node.last_clock is None or node.last_reset_count is None or node.last_restart_count is None:
        return None
    return ClockInfo(
        node.last_clock, node.last_reset_count, node.last_restart_count, bool(node.last_clock_safe)
    )


@router.post("/v1/nodes/{node_id}/evidence", response_model=EvidenceResponse)
def submit_evidence(
    node_id: Annotated[str, Path(max_length=64)], body: EvidenceRequest, request: Request
) -> EvidenceResponse:
    """Failing evidence is a finding (200, contraindicated), not a protocol error."""
    service = service_of(request)
    evidence = _decode(body)
    with service.sessions() as session:
        node = session.get(Node, node_id)
        if node is None:
            raise NotFound(f"no node {node_id}", code="node")
        if node.revoked:
            raise Forbidden(f"node {node_id} is revoked", code="revoked")

    # Before the transaction: a policy lookup may need its own connection; never hold two.
    active = service.active_policy()
    with service.transaction() as session:
        now = service.now()
        # The nonce goes first: it takes the write lock and is spent even if appraisal fails.
        consume_nonce(session, node_id, evidence.nonce, now)
        node = session.scalars(select(Node).where(Node.id == node_id).with_for_update()).one()
        if node.revoked:
            raise Forbidden(f"node {node_id} is revoked", code="revoked")
        view = NodeView(
            node.id, node.name, TpmPublic.unmarshal_tpm2b(node.ak_public), _last_clock(node)
        )
        result_id = str(uuid.uuid4())
        not_after = now + timedelta(seconds=float(active.policy.result_validity_seconds))
        status, reasons, clock, claims = _appraise(
            service, active, view, evidence, result_id, now, not_after
        )
        ear = sign_ear(service.signing_key, claims)
        session.add(
            Result(
                id=result_id,
                node_id=node.id,
                status=status,
                ear=ear,
                reasons=reasons,
                policy_ref=f"{active.policy_id}@{active.version}",
                not_after=not_after,
                created_at=now,
            )
        )
        session.flush()
        if clock is not None:
            node.last_clock = clock.clock
            node.last_reset_count = clock.reset_count
            node.last_restart_count = clock.restart_count
            node.last_clock_safe = clock.safe
        node.latest_result_id = result_id
        if status == Status.CONTRAINDICATED:
            node.trusted_until = None
            transition(session, node, NodeState.FAILED, _reason(reasons), now, result_id)
        else:
            node.trusted_until = not_after
            transition(session, node, NodeState.TRUSTED, status, now, result_id)
        state = node.state
    return EvidenceResponse(
        result_id=result_id,
        status=status,
        ear=ear,
        not_after=rfc3339(not_after),
        reasons=reasons,
        state=state,
    )


def _reason(reasons: list[str]) -> str:
    return reasons[0] if reasons else "contraindicated"


def _appraise(
    service: Service,
    active: ActivePolicy,
    view: NodeView,
    evidence: Evidence,
    result_id: str,
    now: datetime,
    not_after: datetime,
) -> tuple[str, list[str], ClockInfo | None, dict[str, Any]]:
    """Status, reasons, the verified quote's clock (None unless it verified) and EAR claims.

    Whatever goes wrong inside appraisal ends as contraindicated: fail closed.
    """
    appraiser = service.require_appraiser()
    try:
        node = view
        appraisal = appraiser.appraise(
            active.policy, active.references, node, evidence, evidence.nonce
        )
        status = Status(str(appraisal.status))
        reasons = [str(reason) for reason in appraisal.reasons]
        claims = appraiser.ear_claims(
            appraisal,
            node,
            result_id,
            evidence.nonce,
            now,
            not_after,
            service.config.verifier_build,
        )
        return status, reasons, appraisal.clock, claims
    except EvidenceError as error:
        reason = f"evidence: {error}"
    except Exception:
        log.exception("appraisal of node %s raised", view.node_id)
        reason = "internal: appraisal failed; see the verifier log"
    claims = ear_claims(
        node_id=view.node_id,
        node_name=view.name,
        result_id=result_id,
        status=Status.CONTRAINDICATED,
        trust_vector={
            claim: AR4SI["contraindicated"] if claim == "instance-identity" else AR4SI["none"]
            for claim in TRUST_CLAIMS
        },
        reasons=[reason],
        policy_ref=f"{active.policy_id}@{active.version}",
        nonce=evidence.nonce,
        issued_at=now,
        not_after=not_after,
        verifier_build=service.config.verifier_build,
        reset_count=view.last_clock.reset_count if view.last_clock else 0,
        restart_count=view.last_clock.restart_count if view.last_clock else 0,
        new_boot=False,
    )
    return Status.CONTRAINDICATED, [reason], None, claims
