"""Attestation nonces: 32 random bytes, bound to one node, single use, short-lived."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel
from sqlalchemy import Connection, LargeBinary, bindparam, false, insert, literal, select, update
from sqlalchemy.orm import Session

from stockade.verifier.db import rows_changed
from stockade.verifier.errors import Conflict, Forbidden, NotFound
from stockade.verifier.models import Node, Nonce, UtcDateTime
from stockade.verifier.node_auth import (
    AuthenticatedNode,
    SignatureSpend,
    record_spend,
    refuse_replay,
    require_node_spending_with_the_route,
)
from stockade.verifier.rate_limit import client_address
from stockade.verifier.service import service_of
from stockade.verifier.states import NodeState
from stockade.verifier.wire import encode_b64, rfc3339

router = APIRouter(tags=["attestation"])

NONCE_BYTES = 32


class NonceResponse(BaseModel):
    nonce: str
    expires_at: str
    pcr_selection: str


_USABLE = select(Nonce.id).where(
    Nonce.node_id == bindparam("b_node"),
    Nonce.value == bindparam("b_value"),
    Nonce.used.is_(False),
    Nonce.expires_at > bindparam("b_now"),
)


def nonce_usable(connection: Connection, node_id: str, value: bytes, now: datetime) -> bool:
    """Whether the nonce is issued to ``node_id``, unused and unexpired: a hint only
    (:func:`consume_nonce` decides)."""
    found = connection.execute(_USABLE, {"b_node": node_id, "b_value": value, "b_now": now})
    return found.first() is not None


# Built once (the committer consumes a nonce for every result).
_CONSUME = (
    update(Nonce)
    .where(
        Nonce.node_id == bindparam("b_node"),
        Nonce.value == bindparam("b_value"),
        Nonce.used.is_(False),
        Nonce.expires_at > bindparam("b_now"),
    )
    .values(used=True)
    .execution_options(synchronize_session=False)
)


def consume_nonce(session: Session | Connection, node_id: str, value: bytes, now: datetime) -> None:
    """Mark the nonce used, atomically, or raise 409 ``nonce``: one statement decides, so two
    submissions racing with the same nonce cannot both win (SQLite and PostgreSQL alike)."""
    consumed = rows_changed(
        session.execute(_CONSUME, {"b_node": node_id, "b_value": value, "b_now": now})
    )
    if consumed != 1:
        raise Conflict("the nonce is unknown, expired or already used", code="nonce")


@router.post("/v1/nodes/{node_id}/nonces", status_code=201, response_model=NonceResponse)
def issue_nonce(
    node_id: Annotated[str, Path(max_length=64)],
    node: Annotated[AuthenticatedNode, Depends(require_node_spending_with_the_route)],
    request: Request,
) -> NonceResponse:
    """The signature's spend and the nonce are written in the batch of the process's one
    writer (``stockade.verifier.committer``): no commit of their own."""
    service = service_of(request)
    now = service.issuing_now()
    # Looked up before the write (it may need its own connection), but reported after the
    # node checks, as before.
    policy_error: Conflict | None = None
    try:
        active = service.active_policy()
    except Conflict as error:
        policy_error = error
    value = os.urandom(NONCE_BYTES)
    expires_at = now + timedelta(seconds=service.config.nonce_ttl_seconds)
    assert node.spend is not None  # require_node_spending_with_the_route hands it over
    issue = _IssueNonce(node_id, node.spend, None if policy_error else value, expires_at)
    try:
        service.committer.submit(issue)
    except _Replayed:
        raise refuse_replay(
            service, node, request.method, request.url.path, client_address(request)
        ) from None
    except _NotIssued:
        # Nothing was stored for this node: a read says why.
        with service.engine.connect() as connection:
            row = connection.execute(
                select(Node.revoked, Node.state).where(Node.id == node_id)
            ).first()
        if row is None:
            raise NotFound(f"no node {node_id}", code="node") from None
        if row.revoked:
            raise Forbidden(f"node {node_id} is revoked", code="revoked") from None
        if row.state == NodeState.PENDING:
            raise Forbidden(
                f"node {node_id} waits for the operator's approval (stockade nodes approve NAME)",
                code="pending",
            ) from None
        if policy_error is not None:
            raise policy_error from None
        raise RuntimeError(f"nonce for node {node_id} was not stored") from None
    return NonceResponse(
        nonce=encode_b64(value),
        expires_at=rfc3339(expires_at),
        pcr_selection=str(active.policy.pcrs),
    )


class _Replayed(Exception):
    """The request's signature was used before."""


class _NotIssued(Exception):
    """No nonce was stored: the node is missing, revoked or pending, or there is no policy."""


@dataclass(frozen=True)
class _IssueNonce:
    """The nonce route's writes, for the group committer (``BatchItem``): the signature's
    spend (which stands even if no nonce is issued), then the nonce, stored in one statement
    only for an existing, unrevoked, approved node. ``value`` None: no policy, issue none."""

    node_id: str
    spend: SignatureSpend
    value: bytes | None
    expires_at: datetime

    @property
    def sort_key(self) -> str:
        return self.node_id

    def claim(self, connection: Connection) -> list[bytes]:
        if not record_spend(connection, self.spend):
            raise _Replayed
        if self.value is None:
            raise _NotIssued
        inserted = connection.execute(
            insert(Nonce)
            .from_select(
                ["node_id", "value", "expires_at", "used"],
                select(
                    Node.id,
                    literal(self.value, LargeBinary),
                    literal(self.expires_at, UtcDateTime),
                    false(),
                ).where(
                    Node.id == self.node_id,
                    Node.revoked.is_(False),
                    Node.state != NodeState.PENDING,
                ),
            )
            .returning(Nonce.id)
        ).all()
        if len(inserted) != 1:
            raise _NotIssued
        return []

    def logged(self, connection: Connection, index: int | None) -> None:
        return None
