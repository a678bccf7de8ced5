"""Signed node status statements: the verifier's short-lived word on a node's current
standing, which relying parties check next to a node certificate (like OCSP stapling).

A statement is a JWT (ES256, the verifier's EAR key, ``kid`` in its header) valid for about a
minute. :func:`verify_status` checks it offline against the verifier key the relying
party pinned.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stockade.errors import VerificationFailed
from stockade.statements import ISSUER, StatementInvalid, VerifierKeys

STATUS_TYPE = "stockade-node-status+jwt"


@dataclass(frozen=True)
class NodeStatus:
    node_id: str
    name: str
    state: str
    trusted: bool
    result_id: str | None
    trusted_until: datetime | None
    issued_at: datetime
    expires_at: datetime


def status_claims(
    *,
    node_id: str,
    name: str,
    state: str,
    trusted: bool,
    result_id: str | None,
    trusted_until: datetime | None,
    issued_at: datetime,
    expires_at: datetime,
) -> dict[str, Any]:
    return {
        "iss": ISSUER,
        "sub": node_id,
        "iat": int(issued_at.timestamp()),
        "exp": int(expires_at.timestamp()),
        "stockade.node-name": name,
        "stockade.state": state,
        "stockade.trusted": trusted,
        "stockade.result-id": result_id,
        "stockade.trusted-until": int(trusted_until.timestamp()) if trusted_until else None,
    }


def verify_status(token: str, keys: VerifierKeys, node: str, now: datetime) -> NodeStatus:
    """The statement's content once its signature (under the pinned ``keys``), subject and
    validity at ``now`` check out. ``node`` is the node id asked about, or its name (names
    are never UUIDs). Only pinned keys (``VerifierKeys``, loaded from what the relying party
    pinned): a key set fetched with the statement would prove nothing."""
    try:
        claims = keys.verify(token, f"node status for {node}", typ=STATUS_TYPE, now=now)
    except StatementInvalid as error:
        raise VerificationFailed(str(error)) from None
    if claims.get("iss") != ISSUER or not isinstance(claims.get("sub"), str):
        raise VerificationFailed(f"node status for {node} is not a Stockade status statement")
    if node not in (claims["sub"], claims.get("stockade.node-name")):
        raise VerificationFailed(
            f"node status for {node} is about node {claims.get('stockade.node-name')} "
            f"({claims['sub']})"
        )
    issued = datetime.fromtimestamp(int(claims["iat"]), UTC)
    expires = datetime.fromtimestamp(int(claims["exp"]), UTC)
    until = claims.get("stockade.trusted-until")
    return NodeStatus(
        node_id=str(claims["sub"]),
        name=str(claims.get("stockade.node-name", "")),
        state=str(claims.get("stockade.state", "")),
        trusted=claims.get("stockade.trusted") is True,
        result_id=claims.get("stockade.result-id"),
        trusted_until=datetime.fromtimestamp(int(until), UTC) if until else None,
        issued_at=issued,
        expires_at=expires,
    )
