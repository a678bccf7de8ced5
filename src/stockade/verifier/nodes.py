"""Operator API: list and show nodes, their results and every result of a time range with its
transparency-log receipt (a reader or operator credential), revoke and allow (an operator
credential, recorded as the event's actor)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jwt
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from stockade.statements import FLEET_TRUST_TYPE, FleetEntry, fleet_trust_claims
from stockade.verifier.errors import BadRequest, NotFound
from stockade.verifier.log_api import MAX_INDEX, receipts_at_head
from stockade.verifier.models import Node, Result
from stockade.verifier.operator_actions import record_action
from stockade.verifier.operator_auth import OperatorActor, ReaderActor
from stockade.verifier.results import decode_ear
from stockade.verifier.service import Service, service_of
from stockade.verifier.states import NodeState, effective_state, transition
from stockade.verifier.wire import rfc3339

router = APIRouter(tags=["operator"])

NodeId = Annotated[str, Path(max_length=64)]


class OperatorAction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # None: the action's own word ("revoked", "allowed"); who acted is the event's actor.
    reason: str | None = Field(default=None, min_length=1, max_length=500)


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


# The latest result's release columns, read with the node (GET /v1/nodes, /v1/nodes/{id}).
RELEASE_COLUMNS = (
    Result.release_name,
    Result.release_version,
    Result.release_security_version,
    Result.release_digest,
)


def release_json(
    name: str | None, version: str | None, security_version: int | None, digest: str | None
) -> dict[str, Any] | None:
    """The booted release a result records (``name``, ``version``, ``security_version``,
    ``digest``: the signed manifest's sha256, hex), or None: the boot matched no release, or
    the result predates migration 0012. A UKI has its name only."""
    if name is None:
        return None
    return {
        "name": name,
        "version": version,
        "security_version": security_version,
        "digest": digest,
    }


def _with_release(node: Node, row: Row[Any] | tuple[Any, ...], service: Service) -> dict[str, Any]:
    return {**node_json(node, service), "release": release_json(*row)}


def result_json(
    result: Result, service: Service, receipts: dict[int, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A stored result; with ``receipts`` (``receipts_at_head``), its ``log_index`` and
    ``inclusion_proof`` (None for a result stored before results were logged)."""
    document = {
        "result_id": result.id,
        "node_id": result.node_id,
        "status": result.status,
        "reasons": result.reasons,
        "policy": result.policy_ref,
        "not_after": rfc3339(result.not_after),
        "created_at": rfc3339(result.created_at),
        "release": release_json(
            result.release_name,
            result.release_version,
            result.release_security_version,
            result.release_digest,
        ),
        "ear": result.ear,
        "claims": decode_ear(result.ear, service.signing_key),
        "log_index": result.log_index,
    }
    if receipts is not None:
        index = result.log_index
        document["inclusion_proof"] = None if index is None else receipts.get(index)
    return document


@router.get("/v1/nodes")
def list_nodes(request: Request, _actor: ReaderActor) -> dict[str, list[dict[str, Any]]]:
    """Every node, with the release its latest result records (``release``, or null)."""
    service = service_of(request)
    with service.sessions() as session:
        rows = session.execute(
            select(Node, *RELEASE_COLUMNS)
            .outerjoin(Result, Result.id == Node.latest_result_id)
            .order_by(Node.name, Node.id)
        ).all()
        return {"nodes": [_with_release(row[0], row[1:], service) for row in rows]}


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
        row = session.execute(
            select(Node, *RELEASE_COLUMNS)
            .outerjoin(Result, Result.id == Node.latest_result_id)
            .where(Node.id == node_id)
        ).first()
        if row is None:
            raise NotFound(f"no node {node_id}", code="node")
        return _with_release(row[0], row[1:], service)


@router.get("/v1/nodes/{node_id}/results")
def node_results(
    node_id: NodeId,
    request: Request,
    _actor: ReaderActor,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> dict[str, list[dict[str, Any]]]:
    """Newest first, each with its EAR decoded (signature checked), its ``log_index`` and its
    receipt (``inclusion_proof``) against the current signed checkpoint."""
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
        # After the rows: every index they carry is inside the head the receipts prove.
        receipts = receipts_at_head(service.translog, (row.log_index for row in rows))
        return {"results": [result_json(row, service, receipts) for row in rows]}


MAX_RESULTS_PAGE = 500


def parse_moment(text: str | None, what: str) -> datetime | None:
    """An RFC 3339 time with a zone, in UTC; 400 (code ``what``) otherwise."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{what}: {text!r} is not an RFC 3339 time", code=what) from None
    if moment.tzinfo is None:
        raise BadRequest(f"{what}: give a time zone (e.g. Z)", code=what)
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise BadRequest(f"{what}: {text!r} is out of range", code=what) from None


@router.get("/v1/results")
def list_results(
    request: Request,
    _actor: ReaderActor,
    since: Annotated[str | None, Query(max_length=64, description="RFC 3339, inclusive")] = None,
    until: Annotated[str | None, Query(max_length=64, description="RFC 3339, exclusive")] = None,
    node: Annotated[str | None, Query(max_length=255, description="node id or name")] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_INDEX, description="the previous page's next")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_RESULTS_PAGE)] = 100,
) -> dict[str, Any]:
    """Every logged result created in ``[since, until)`` (of ``node``), oldest log entry
    first, each with its receipt against one signed checkpoint. The cursor is the log index
    (``after``: the previous page's ``next``): results are logged in the transaction that
    stores them, under the log's write lock, so they commit in log order and a result that
    commits while an auditor pages lands after the cursor, never behind it. ``next`` is None
    when this page is the last (as of now). Results stored before the log existed have no
    index and are not listed."""
    service = service_of(request)
    start, stop = parse_moment(since, "since"), parse_moment(until, "until")
    query = (
        select(Result, Node.name)
        .join(Node, Node.id == Result.node_id)
        .where(Result.log_index.is_not(None))
        .order_by(Result.log_index)
        .limit(limit)
    )
    if after is not None:
        query = query.where(Result.log_index > after)
    if start is not None:
        query = query.where(Result.created_at >= start)
    if stop is not None:
        query = query.where(Result.created_at < stop)
    if node:
        query = query.where((Node.id == node) | (Node.name == node))
    with service.sessions() as session:
        rows = session.execute(query).all()
        receipts = receipts_at_head(service.translog, (row.Result.log_index for row in rows))
        results = [
            {**result_json(row.Result, service, receipts), "node_name": row.name} for row in rows
        ]
    last = rows[-1].Result.log_index if rows else None
    return {
        "since": since,
        "until": until,
        "node": node,
        "results": results,
        "next": last if len(rows) == limit else None,
    }


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
        reason = (body.reason if body else None) or "revoked"
        transition(session, node, NodeState.REVOKED, reason, now, actor=actor.name)
        answer = node_json(node, service)
        record_action(session, service, actor.name, "node.revoke", node.id, reason)
        return answer


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
            reason = (body.reason if body else None) or "allowed"
            transition(session, node, NodeState.ENROLLED, reason, now, actor=actor.name)
        else:
            reason = "not revoked: unchanged"
        answer = node_json(node, service)
        record_action(session, service, actor.name, "node.allow", node.id, reason)
        return answer
