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
from typing import Annotated, Any, Literal

import anyio.to_thread
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Path, Request
from sqlalchemy import Connection, bindparam, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from stockade.channel import ChannelAuthError, verify_request
from stockade.evidence.errors import EvidenceError
from stockade.evidence.public import TpmPublic
from stockade.verifier.errors import Unauthorized
from stockade.verifier.models import ChannelReplay, Node
from stockade.verifier.rate_limit import client_address
from stockade.verifier.security_events import record_security_event
from stockade.verifier.service import Service, service_of

# Where a verified signature's nonce is recorded as used: in the database before the route
# runs ("now"), by the route in its own write ("route"), or only in this process ("memory").
Spend = Literal["now", "route", "memory"]
UNKNOWN = "channel-unknown"  # the agent enrolls again on this code
REFUSED = "channel"
_KEY_CACHE_LIMIT = 100_000


@dataclass(frozen=True)
class SignatureSpend:
    """A verified request's signature nonce, to record as used (``ChannelReplay``)."""

    node_id: str
    nonce: str
    expires_at: datetime


@dataclass(frozen=True)
class AuthenticatedNode:
    node_id: str
    name: str
    # Set by ``require_node_spending_with_the_route``: the route records it in its own write.
    spend: SignatureSpend | None = None


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
# Built once: every node call reads its key.
_READ_KEY = select(Node.name, Node.channel_key_public).where(Node.id == bindparam("b_node"))


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
    spend: Spend,
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
    spend: Spend,
) -> AuthenticatedNode:
    row = connection.execute(_READ_KEY, {"b_node": node_id}).first()
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
        spent = _signature_spend(service, signed.keyid, signed.nonce, max(now, signed.created))
        if spend == "now":
            _spend(connection, spent)
    except ChannelAuthError as error:
        raise _Refused(f"channel-{error.reason}", error.detail, REFUSED, row.name) from None
    except EvidenceError as error:  # a stored key that does not parse: refuse, never 500
        raise _Refused(
            "channel-unknown",
            f"node {node_id}'s channel key is unusable: {error}",
            UNKNOWN,
            row.name,
        ) from None
    return AuthenticatedNode(node_id, row.name, spent if spend == "route" else None)


def _signature_spend(service: Service, node_id: str, nonce: str, created: int) -> SignatureSpend:
    """Kept until the signature is stale anyway."""
    skew = service.config.channel_max_skew_seconds
    return SignatureSpend(node_id, nonce, datetime.fromtimestamp(created + skew + 1, UTC))


def _spend(connection: Connection, spent: SignatureSpend) -> None:
    """Record the signature's nonce in the database, the one place every replica (and this one
    after a restart) sees: a second use is a replay."""
    if not record_spend(connection, spent):
        raise ChannelAuthError("replay", "this signature was already used (a replay)")


def record_spend(connection: Connection, spent: SignatureSpend) -> bool:
    """Record ``spent`` as used, in the caller's transaction; False (nothing written, the
    transaction still usable) when it was already: a replay."""
    values = {"node_id": spent.node_id, "nonce": spent.nonce, "expires_at": spent.expires_at}
    dialect = connection.dialect.name
    if dialect == "postgresql":
        statement: Any = postgresql_insert(ChannelReplay).values(**values)
    elif dialect == "sqlite":
        statement = sqlite_insert(ChannelReplay).values(**values)
    else:
        raise RuntimeError(f"unsupported database dialect {dialect}")
    # RETURNING, not the row count: psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING.
    returned = connection.execute(
        statement.on_conflict_do_nothing().returning(ChannelReplay.nonce)
    ).first()
    return returned is not None


def refuse_replay(
    service: Service, node: AuthenticatedNode, method: str, path: str, source: str | None
) -> Unauthorized:
    """The 401 for a request whose signature ``record_spend`` found used, recorded as a
    security event as every other channel refusal is."""
    detail = "this signature was already used (a replay)"
    record_security_event(
        service, "channel-replay", f"{method} {path}: {detail}",
        node_id=node.node_id, name=node.name, source=source,
    )  # fmt: skip
    return Unauthorized(detail, code=REFUSED)


async def require_node(
    node_id: Annotated[str, Path(max_length=64)], request: Request
) -> AuthenticatedNode:
    """FastAPI dependency: the node named in the path signed this very request, and its
    signature was never used before, at any replica (its nonce is spent in the database)."""
    return await _require(node_id, request, spend="now")


async def require_node_spending_with_the_route(
    node_id: Annotated[str, Path(max_length=64)], request: Request
) -> AuthenticatedNode:
    """As ``require_node``, for a route that writes anyway: the signature nonce is not spent
    here but handed to the route (``AuthenticatedNode.spend``), which records it with
    ``record_spend`` in its own transaction and refuses (``refuse_replay``) when it was used."""
    return await _require(node_id, request, spend="route")


async def require_node_spending_a_nonce(
    node_id: Annotated[str, Path(max_length=64)], request: Request
) -> AuthenticatedNode:
    """As ``require_node``, for routes that themselves spend a single-use verifier nonce
    (evidence, certificates): a replay of such a request cannot change anything at any
    replica (409 ``nonce``), so its signature nonce is only remembered in this process, and
    the database write is saved."""
    return await _require(node_id, request, spend="memory")


async def _require(node_id: str, request: Request, *, spend: Spend) -> AuthenticatedNode:
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
