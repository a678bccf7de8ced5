"""Attestation nonces: 32 random bytes, bound to one node, single use, short-lived."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

import anyio.to_thread
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
from stockade.verifier.service import ActivePolicy, Service, service_of
from stockade.verifier.states import NodeState
from stockade.verifier.wire import encode_b64, rfc3339

router = APIRouter(tags=["attestation"])

NONCE_BYTES = 32


class NonceResponse(BaseModel):
    nonce: str
    expires_at: str
    pcr_selection: str


# Built once: every attestation reads, then spends, a nonce. One condition for both: issued to
# this node, unused, unexpired.
_UNSPENT = (
    Nonce.node_id == bindparam("b_node"),
    Nonce.value == bindparam("b_value"),
    Nonce.used.is_(False),
    Nonce.expires_at > bindparam("b_now"),
)
_USABLE = select(Nonce.id).where(*_UNSPENT)
_CONSUME = (
    update(Nonce).where(*_UNSPENT).values(used=True).execution_options(synchronize_session=False)
)


def nonce_usable(connection: Connection, node_id: str, value: bytes, now: datetime) -> bool:
    """Whether the nonce is issued to ``node_id``, unused and unexpired: a hint only
    (:func:`consume_nonce` decides)."""
    found = connection.execute(_USABLE, {"b_node": node_id, "b_value": value, "b_now": now})
    return found.first() is not None


def consume_nonce(session: Session | Connection, node_id: str, value: bytes, now: datetime) -> None:
    """Mark the nonce used, atomically, or raise 409 ``nonce``: one statement decides, so two
    submissions racing with the same nonce cannot both win (SQLite and PostgreSQL alike)."""
    consumed = rows_changed(
        session.execute(_CONSUME, {"b_node": node_id, "b_value": value, "b_now": now})
    )
    if consumed != 1:
        raise Conflict("the nonce is unknown, expired or already used", code="nonce")


@router.post("/v1/nodes/{node_id}/nonces", status_code=201, response_model=NonceResponse)
async def issue_nonce(
    node_id: Annotated[str, Path(max_length=64)],
    node: Annotated[AuthenticatedNode, Depends(require_node_spending_with_the_route)],
    request: Request,
) -> NonceResponse:
    """The signature's spend and the nonce are written in the batch of the process's one
    writer (``stockade.verifier.committer``): no commit of their own, no thread waiting."""
    service = service_of(request)
    now = service.issuing_now()
    # Looked up before the write (it may need a query), but reported after the node checks.
    active, policy_error = await anyio.to_thread.run_sync(_active_policy, service)
    value = os.urandom(NONCE_BYTES)
    expires_at = now + timedelta(seconds=service.config.nonce_ttl_seconds)
    assert node.spend is not None  # require_node_spending_with_the_route hands it over
    issue = _IssueNonce(node_id, node.spend, None if policy_error else value, expires_at)
    try:
        await service.committer.submit_async(issue)
    except _Replayed:
        raise await anyio.to_thread.run_sync(
            refuse_replay, service, node, request.method, request.url.path, client_address(request)
        ) from None
    except _NotIssued:
        raise await anyio.to_thread.run_sync(
            _why_not_issued, service, node_id, policy_error
        ) from None
    assert active is not None  # a nonce was issued: there is a policy
    return NonceResponse(
        nonce=encode_b64(value),
        expires_at=rfc3339(expires_at),
        pcr_selection=str(active.policy.pcrs),
    )


def _active_policy(service: Service) -> tuple[ActivePolicy | None, Conflict | None]:
    try:
        return service.active_policy(), None
    except Conflict as error:
        return None, error


def _why_not_issued(service: Service, node_id: str, policy_error: Conflict | None) -> Exception:
    """Nothing was stored for this node: a read says why."""
    with service.engine.connect() as connection:
        row = connection.execute(select(Node.revoked, Node.state).where(Node.id == node_id)).first()
    if row is None:
        return NotFound(f"no node {node_id}", code="node")
    if row.revoked:
        return Forbidden(f"node {node_id} is revoked", code="revoked")
    if row.state == NodeState.PENDING:
        return Forbidden(
            f"node {node_id} waits for the operator's approval (stockade nodes approve NAME)",
            code="pending",
        )
    if policy_error is not None:
        return policy_error
    return RuntimeError(f"nonce for node {node_id} was not stored")


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
