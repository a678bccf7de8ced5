"""The operator admits machines: approve a pending node, or open a node's name for new hardware.

``POST /v1/nodes/{id}/approve``: a node enrolled under mode ``approve`` waits as ``pending``
(no nonce, no evidence, nothing) until the operator approves it. ``POST /v1/nodes/{id}/replace``:
for a board swap, the node's name is opened for ``replace_ttl_seconds`` to one other EK (any,
or the one named): when it enrolls under that name, it becomes this node, keeping its id,
history, grants and labels. Both need the operator token; the event records who acted.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from stockade.verifier.config import normalize_ek_entry
from stockade.verifier.errors import BadRequest, Conflict
from stockade.verifier.events import record_event
from stockade.verifier.nodes import locked_node, node_json
from stockade.verifier.operator_actions import record_action
from stockade.verifier.operator_auth import OperatorActor
from stockade.verifier.service import service_of
from stockade.verifier.states import NodeState, transition

router = APIRouter(tags=["operator"])

NodeId = Annotated[str, Path(max_length=64)]


class ApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="approved", min_length=1, max_length=500)


class ReplaceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ek: str | None = Field(
        default=None,
        max_length=80,
        description="the new EK: its identity or certificate sha256 (hex), or serial:<hex>",
    )
    reason: str = Field(default="board replaced", min_length=1, max_length=500)


@router.post("/v1/nodes/{node_id}/approve")
def approve(
    node_id: NodeId, request: Request, actor: OperatorActor, body: ApproveBody | None = None
) -> dict[str, Any]:
    """A pending node becomes ``enrolled`` and may attest."""
    service = service_of(request)
    now = service.now()
    with service.transaction() as session:
        node = locked_node(session, node_id)
        if node.state != NodeState.PENDING:
            raise Conflict(f"node {node.name} is {node.state}, not pending", code="state")
        node.allowed = True
        node.pending_until = None
        reason = (body or ApproveBody()).reason
        transition(session, node, NodeState.ENROLLED, reason, now, actor=actor.name)
        answer = node_json(node, service)
        record_action(session, service, actor.name, "node.approve", node.id, reason)
        return answer


@router.post("/v1/nodes/{node_id}/replace")
def replace(
    node_id: NodeId, request: Request, actor: OperatorActor, body: ReplaceBody | None = None
) -> dict[str, Any]:
    """Open the node's name to new hardware for ``replace_ttl_seconds``."""
    service = service_of(request)
    now = service.now()
    body = body or ReplaceBody()
    selector = None
    if body.ek:
        selector = normalize_ek_entry(body.ek)
        if selector is None:
            raise BadRequest(
                f"ek {body.ek!r}: give a sha256 hex fingerprint or serial:<hex>", code="ek"
            )
    with service.transaction() as session:
        node = locked_node(session, node_id)
        if node.revoked:
            raise Conflict(f"node {node.name} is revoked: allow it first", code="revoked")
        node.replace_until = now + timedelta(seconds=service.config.replace_ttl_seconds)
        node.replace_ek = selector
        node.updated_at = now
        record_event(
            session,
            node,
            node.state,
            node.state,
            f"{body.reason}: the name {node.name} is open to "
            f"{'EK ' + selector if selector else 'new hardware'} until the new TPM enrolls",
            now,
            actor=actor.name,
        )
        answer = node_json(node, service)
        answer["replace_ek"] = selector
        record_action(
            session, service, actor.name, "node.replace", node.id,
            f"{body.reason}; ek {selector or 'any'}",
        )  # fmt: skip
        return answer
