"""Signed node status statements: the verifier's short-lived word on a node's current
standing, which relying parties check next to a node certificate (like OCSP stapling).

A statement is a JWT (ES256, the verifier's EAR key, ``kid`` in its header) valid for about a
minute. :func:`verify_status` checks it offline against the verifier's JWK set.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt

from stockade.errors import VerificationFailed

STATUS_TYPE = "stockade-node-status+jwt"
ISSUER = "stockade-verifier"


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


def _key_for(token: str, jwks: Mapping[str, Any]) -> Any:
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError as error:
        raise VerificationFailed(f"node status is not a JWT: {error}") from None
    for entry in jwks.get("keys", []):
        if isinstance(entry, Mapping) and entry.get("kid") == kid:
            try:
                return jwt.PyJWK.from_dict(dict(entry)).key
            except jwt.PyJWTError as error:
                raise VerificationFailed(f"verifier key {kid} is unusable: {error}") from None
    raise VerificationFailed(
        f"node status is signed by key {kid}, which the verifier does not list"
    )


def verify_status(token: str, jwks: Mapping[str, Any], node_id: str, now: datetime) -> NodeStatus:
    """The statement's content once its signature, subject and validity at ``now`` check out."""
    try:
        claims = jwt.decode(
            token,
            _key_for(token, jwks),
            algorithms=["ES256"],
            issuer=ISSUER,
            subject=node_id,
            options={"verify_exp": False, "verify_iat": False, "require": ["exp", "iat", "sub"]},
        )
    except jwt.PyJWTError as error:
        raise VerificationFailed(f"node status for {node_id} does not verify: {error}") from None
    issued = datetime.fromtimestamp(int(claims["iat"]), UTC)
    expires = datetime.fromtimestamp(int(claims["exp"]), UTC)
    if not issued.timestamp() - 60 <= now.timestamp() < expires.timestamp():
        raise VerificationFailed(
            f"node status for {node_id} is valid {issued.isoformat()} to {expires.isoformat()}, "
            f"not at {now.isoformat()}"
        )
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
