"""Operator API: list and show nodes, their results (a reader or operator credential), revoke
and allow (an operator credential, recorded as the event's actor)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import jwt
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from stockade.statements import FLEET_TRUST_TYPE, FleetEntry, fleet_trust_claims
from stockade.verifier.errors import NotFound
from stockade.verifier.models import Node, Result
from stockade.verifier.operator_auth import OperatorActor, ReaderActor
from stockade.verifier.results import decode_ear
from stockade.verifier.service import Service, service_of
from stockade.verifier.states import NodeState, effective_state, transition
from stockade.verifier.wire import rfc3339

router = APIRouter(tags=["operator"])

NodeId = Annotated[str, Path(max_length=64)]


class OperatorAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="operator", min_length=1, max_length=500)


def node_json(node: Node, service: Service) -> dict[str, Any]:
    return {
        "node_id": node.id,
        "name": node.name,
        "state": effective_state(node, service.now()),
        "ek_fingerprint": node.ek_fingerprint,
        # "ek", or "ak-certificate" (a cloud vTPM: ek_fingerprint is then its certified AK's
        # identity, and instance the cloud instance its AK certificate names).
        "identity_kind": node.identity_kind,
        "instance": node.instance,
        "instance_key": node.instance_key,
        "channel_key": node.channel_key_public is not None,
        "pending_until": rfc3339(node.pending_until) if node.pending_until else None,
        "replace_until": rfc3339(node.replace_until) if node.replace_until else None,
        "revoked": node.revoked,
        "trusted_until": rfc3339(node.trusted_until) if node.trusted_until else None,
        "latest_result_id": node.latest_result_id,
        "labels": dict(node.labels or {}),
        "clock": None
        if node.last_clock is None
        else {
            "clock": node.last_clock,
            "reset_count": node.last_reset_count,
            "restart_count": node.last_restart_count,
            "safe": node.last_clock_safe,
        },
        "created_at": rfc3339(node.created_at),
        "updated_at": rfc3339(node.updated_at),
    }


def result_json(result: Result, service: Service) -> dict[str, Any]:
    return {
        "result_id": result.id,
        "node_id": result.node_id,
        "status": result.status,
        "reasons": result.reasons,
        "policy": result.policy_ref,
        "not_after": rfc3339(result.not_after),
        "created_at": rfc3339(result.created_at),
        "ear": result.ear,
        "claims": decode_ear(result.ear, service.signing_key),
    }


@router.get("/v1/nodes")
def list_nodes(request: Request, _actor: ReaderActor) -> dict[str, list[dict[str, Any]]]:
    service = service_of(request)
    with service.sessions() as session:
        nodes = session.scalars(select(Node).order_by(Node.name, Node.id)).all()
        return {"nodes": [node_json(node, service) for node in nodes]}


@router.get("/v1/trust")
def fleet_trust(request: Request, _actor: ReaderActor) -> dict[str, Any]:
    """Every node's standing in one statement signed with the verifier key (``typ``
    ``stockade-fleet-trust+jwt``, valid ``status_validity_seconds``): what the Kubernetes
    components decide from, checked against the key they pinned. One signature per call,
    whatever the fleet's size."""
    service = service_of(request)
    now = service.now()
    with service.sessions() as session:
        nodes = session.scalars(select(Node).order_by(Node.name, Node.id)).all()
        entries = []
        for node in nodes:
            state = effective_state(node, now)
            trusted = state == NodeState.TRUSTED
            entries.append(
                FleetEntry(
                    node.id,
                    node.name,
                    str(state),
                    node.trusted_until if trusted else None,
                    node.latest_result_id,
                )
            )
    expires = now + timedelta(seconds=service.config.status_validity_seconds)
    key = service.signing_key
    statement = jwt.encode(
        fleet_trust_claims(entries, now, expires),
        key.private_key,
        algorithm="ES256",
        headers={"kid": key.kid, "typ": FLEET_TRUST_TYPE},
    )
    return {"statement": statement, "nodes": len(entries), "expires_at": rfc3339(expires)}


@router.get("/v1/nodes/{node_id}")
def show_node(node_id: NodeId, request: Request, _actor: ReaderActor) -> dict[str, Any]:
    service = service_of(request)
    with service.sessions() as session:
        node = session.get(Node, node_id)
        if node is None:
            raise NotFound(f"no node {node_id}", code="node")
        return node_json(node, service)


@router.get("/v1/nodes/{node_id}/results")
def node_results(
    node_id: NodeId,
    request: Request,
    _actor: ReaderActor,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> dict[str, list[dict[str, Any]]]:
    """Newest first, each with its EAR decoded (signature checked)."""
    service = service_of(request)
    with service.sessions() as session:
        if session.get(Node, node_id) is None:
            raise NotFound(f"no node {node_id}", code="node")
        rows = session.scalars(
            select(Result)
            .where(Result.node_id == node_id)
            .order_by(Result.created_at.desc(), Result.id)
            .limit(limit)
        ).all()
        return {"results": [result_json(row, service) for row in rows]}


def locked_node(session: Session, node_id: str) -> Node:
    """The node, locked for update in ``session``'s transaction; 404 ``node`` when unknown."""
    node = session.scalars(select(Node).where(Node.id == node_id).with_for_update()).first()
    if node is None:
        raise NotFound(f"no node {node_id}", code="node")
    return node


@router.post("/v1/nodes/{node_id}/revoke")
def revoke(
    node_id: NodeId, request: Request, actor: OperatorActor, body: OperatorAction | None = None
) -> dict[str, Any]:
    """The node loses trust now and can neither attest nor re-enroll until allowed."""
    service = service_of(request)
    now = service.now()
    with service.transaction() as session:
        node = locked_node(session, node_id)
        node.revoked = True
        node.allowed = False
        node.trusted_until = None
        reason = (body or OperatorAction()).reason
        transition(session, node, NodeState.REVOKED, reason, now, actor=actor.name)
        return node_json(node, service)


@router.post("/v1/nodes/{node_id}/allow")
def allow(
    node_id: NodeId, request: Request, actor: OperatorActor, body: OperatorAction | None = None
) -> dict[str, Any]:
    """Lift a revocation; the node is ``enrolled`` until its next good result."""
    service = service_of(request)
    now = service.now()
    with service.transaction() as session:
        node = locked_node(session, node_id)
        if node.revoked:
            node.revoked = False
            node.allowed = True
            reason = body.reason if body else "allowed"
            transition(session, node, NodeState.ENROLLED, reason, now, actor=actor.name)
        return node_json(node, service)
