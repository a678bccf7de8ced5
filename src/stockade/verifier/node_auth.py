"""The node channel's door: ``require_node`` authenticates a node call before it touches state.

Every route a node calls after enrollment (nonces, evidence, certificates, secrets) depends on
it. The request must carry an RFC 9421 signature by the channel key pinned on the node's row
(``stockade.channel``), for this method, path, query and body, fresh and not replayed.
Anything else is 401 and a rate-limited security event; the route never runs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import anyio.to_thread
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Path, Request
from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from stockade.channel import ChannelAuthError, verify_request
from stockade.evidence.errors import EvidenceError
from stockade.evidence.public import TpmPublic
from stockade.verifier.errors import Unauthorized
from stockade.verifier.models import ChannelReplay, Node
from stockade.verifier.rate_limit import client_address
from stockade.verifier.security_events import record_security_event
from stockade.verifier.service import Service, service_of

UNKNOWN = "channel-unknown"  # the agent enrolls again on this code
REFUSED = "channel"
_KEY_CACHE_LIMIT = 100_000


@dataclass(frozen=True)
class AuthenticatedNode:
    node_id: str
    name: str


class _ChannelKeys:
    """Parsed channel public keys by their TPM2B_PUBLIC bytes (decoding a point costs more
    than verifying a signature). Keyed by the bytes read from the database on every request,
    so a replaced key is never served from here."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: dict[bytes, ec.EllipticCurvePublicKey] = {}

    def get(self, public: bytes) -> ec.EllipticCurvePublicKey:
        with self._lock:
            key = self._keys.get(public)
        if key is not None:
            return key
        parsed = TpmPublic.unmarshal_tpm2b(public).public_key()
        if not isinstance(parsed, ec.EllipticCurvePublicKey):
            raise EvidenceError("the channel key is not an ECC key")
        with self._lock:
            if len(self._keys) >= _KEY_CACHE_LIMIT:
                self._keys.clear()
            self._keys[public] = parsed
        return parsed


_keys = _ChannelKeys()


class _Refused(Exception):
    """A refusal, recorded as a security event once the transaction that found it is over
    (recording needs a write of its own)."""

    def __init__(self, kind: str, detail: str, code: str, name: str | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.code = code
        self.name = name


def _authenticate(
    service: Service,
    node_id: str,
    method: str,
    path: str,
    query: str,
    body: bytes,
    headers: dict[str, str],
    source: str | None,
    spend: bool,
) -> AuthenticatedNode:
    """Check the request; with ``spend``, also record its signature nonce in the database in
    the same transaction that read the key (one connection, one commit)."""
    try:
        with service.engine.begin() as connection:
            return _check(service, connection, node_id, method, path, query, body, headers, spend)
    except _Refused as refused:
        record_security_event(
            service,
            refused.kind,
            f"{method} {path}: {refused.detail}",
            node_id=node_id if refused.name is not None else None,
            name=refused.name,
            source=source,
        )
        raise Unauthorized(refused.detail, code=refused.code) from None


def _check(
    service: Service,
    connection: Connection,
    node_id: str,
    method: str,
    path: str,
    query: str,
    body: bytes,
    headers: dict[str, str],
    spend: bool,
) -> AuthenticatedNode:
    row = connection.execute(
        select(Node.name, Node.channel_key_public).where(Node.id == node_id)
    ).first()
    if row is None or row.channel_key_public is None:
        raise _Refused(
            "channel-unknown",
            f"node {node_id} has no channel key at this verifier: enroll (again)",
            UNKNOWN,
            None if row is None else row.name,
        )
    now = int(service.now().timestamp())
    try:
        public_key = _keys.get(row.channel_key_public)
        signed = verify_request(
            method,
            path,
            query,
            body,
            headers,
            public_key,
            keyid=node_id,
            now=now,
            max_skew=service.config.channel_max_skew_seconds,
        )
        if not service.replay_cache.admit(signed.keyid, signed.nonce, signed.created, now):
            raise ChannelAuthError("replay", "this signature was already used (a replay)")
        if spend:
            _spend(service, connection, signed.keyid, signed.nonce, max(now, signed.created))
    except ChannelAuthError as error:
        raise _Refused(f"channel-{error.reason}", error.detail, REFUSED, row.name) from None
    except EvidenceError as error:  # a stored key that does not parse: refuse, never 500
        raise _Refused(
            "channel-unknown",
            f"node {node_id}'s channel key is unusable: {error}",
            UNKNOWN,
            row.name,
        ) from None
    return AuthenticatedNode(node_id, row.name)


def _spend(
    service: Service, connection: Connection, node_id: str, nonce: str, created: int
) -> None:
    """Record the signature's nonce in the database, the one place every replica (and this one
    after a restart) sees: a second use is a replay. Kept until the signature is stale."""
    skew = service.config.channel_max_skew_seconds
    expires = datetime.fromtimestamp(created + skew + 1, UTC)
    try:
        with connection.begin_nested():
            connection.execute(
                insert(ChannelReplay).values(node_id=node_id, nonce=nonce, expires_at=expires)
            )
    except IntegrityError:
        raise ChannelAuthError("replay", "this signature was already used (a replay)") from None


async def require_node(
    node_id: Annotated[str, Path(max_length=64)], request: Request
) -> AuthenticatedNode:
    """FastAPI dependency: the node named in the path signed this very request, and its
    signature was never used before, at any replica (its nonce is spent in the database)."""
    return await _require(node_id, request, spend=True)


async def require_node_spending_a_nonce(
    node_id: Annotated[str, Path(max_length=64)], request: Request
) -> AuthenticatedNode:
    """As ``require_node``, for routes that themselves spend a single-use verifier nonce
    (evidence, certificates): a replay of such a request cannot change anything at any
    replica (409 ``nonce``), so its signature nonce is only remembered in this process, and
    the database write is saved."""
    return await _require(node_id, request, spend=False)


async def _require(node_id: str, request: Request, *, spend: bool) -> AuthenticatedNode:
    body = await request.body()
    raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
    path = raw_path.decode("latin-1").split("?", 1)[0]
    query = request.scope.get("query_string", b"").decode("latin-1")
    # Repeated fields are combined as HTTP would (RFC 9110, 5.3): the strict shape then fails.
    headers = {
        name: ", ".join(request.headers.getlist(name))
        for name in ("signature-input", "signature", "content-digest")
        if name in request.headers
    }
    return await anyio.to_thread.run_sync(
        _authenticate,
        service_of(request),
        node_id,
        request.method,
        path,
        query,
        body,
        headers,
        client_address(request),
        spend,
    )
