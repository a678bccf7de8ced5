"""Attestation nonces: 32 random bytes, bound to one node, single use, short-lived."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel
from sqlalchemy import Connection, LargeBinary, false, insert, literal, select, update
from sqlalchemy.orm import Session

from stockade.verifier.db import rows_changed
from stockade.verifier.errors import Conflict, Forbidden, NotFound
from stockade.verifier.models import Node, Nonce, UtcDateTime
from stockade.verifier.node_auth import require_node
from stockade.verifier.service import service_of
from stockade.verifier.states import NodeState
from stockade.verifier.wire import encode_b64, rfc3339

router = APIRouter(tags=["attestation"])

NONCE_BYTES = 32


class NonceResponse(BaseModel):
    nonce: str
    expires_at: str
    pcr_selection: str


def nonce_usable(connection: Connection, node_id: str, value: bytes, now: datetime) -> bool:
    """Whether the nonce is issued to ``node_id``, unused and unexpired: a hint only
    (:func:`consume_nonce` decides)."""
    found = connection.execute(
        select(Nonce.id).where(
            Nonce.node_id == node_id,
            Nonce.value == value,
            Nonce.used.is_(False),
            Nonce.expires_at > now,
        )
    ).first()
    return found is not None


def consume_nonce(session: Session | Connection, node_id: str, value: bytes, now: datetime) -> None:
    """Mark the nonce used, atomically, or raise 409 ``nonce``: one statement decides, so two
    submissions racing with the same nonce cannot both win (SQLite and PostgreSQL alike)."""
    consumed = rows_changed(
        session.execute(
            update(Nonce)
            .where(
                Nonce.node_id == node_id,
                Nonce.value == value,
                Nonce.used.is_(False),
                Nonce.expires_at > now,
            )
            .values(used=True)
            .execution_options(synchronize_session=False)
        )
    )
    if consumed != 1:
        raise Conflict("the nonce is unknown, expired or already used", code="nonce")


@router.post(
    "/v1/nodes/{node_id}/nonces",
    status_code=201,
    response_model=NonceResponse,
    dependencies=[Depends(require_node)],
)
def issue_nonce(node_id: Annotated[str, Path(max_length=64)], request: Request) -> NonceResponse:
    service = service_of(request)
    now = service.issuing_now()
    # Looked up before the transaction (it may need its own connection: never hold two), but
    # reported after the node checks, as before.
    policy_error: Conflict | None = None
    try:
        active = service.active_policy()
    except Conflict as error:
        policy_error = error
    value = os.urandom(NONCE_BYTES)
    expires_at = now + timedelta(seconds=service.config.nonce_ttl_seconds)
    with service.engine.begin() as connection:
        # One statement stores the nonce only for an existing, unrevoked node; when it stores
        # nothing (or the policy is missing), a read says why.
        stored = 0
        if policy_error is None:
            inserted = connection.execute(
                insert(Nonce)
                .from_select(
                    ["node_id", "value", "expires_at", "used"],
                    select(
                        Node.id,
                        literal(value, LargeBinary),
                        literal(expires_at, UtcDateTime),
                        false(),
                    ).where(
                        Node.id == node_id,
                        Node.revoked.is_(False),
                        Node.state != NodeState.PENDING,
                    ),
                )
                .returning(Nonce.id)
            ).all()
            stored = len(inserted)
        if stored != 1:
            row = connection.execute(
                select(Node.revoked, Node.state).where(Node.id == node_id)
            ).first()
            if row is None:
                raise NotFound(f"no node {node_id}", code="node")
            if row.revoked:
                raise Forbidden(f"node {node_id} is revoked", code="revoked")
            if row.state == NodeState.PENDING:
                raise Forbidden(
                    f"node {node_id} waits for the operator's approval "
                    "(stockade nodes approve NAME)",
                    code="pending",
                )
            if policy_error is not None:
                raise policy_error
            raise RuntimeError(f"nonce for node {node_id} was not stored")
    return NonceResponse(
        nonce=encode_b64(value),
        expires_at=rfc3339(expires_at),
        pcr_selection=str(active.policy.pcrs),
    )
