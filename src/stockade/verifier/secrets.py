"""The secret store (operator API) and secret release (to nodes, sealed to their TPM).

Secrets are stored AES-256-GCM encrypted under the key-encryption key ring
(:mod:`stockade.cluster.secret_store`). A release goes only to a granted node in good standing
and only as a TPM2_Import duplication blob for that node's EK whose unseal policy is
PolicySigned by the node's channel key, then PolicyPCR over the PCR values its latest result
attested: the secret never leaves this process in the clear, is never logged, and on the node
only the holder of the channel key (the agent) can unseal it.

Each release is signed: a secret-release statement (:func:`stockade.statements.
verify_secret_release`) says this exact blob is version N of secret NAME for node ID, sealed
to these PCRs on this result. The blob alone authenticates nothing (anyone can make one from
the node's public EK and channel key), so the agent accepts a blob only with a statement that
verifies under the verifier key it pinned.

A ``node:`` grant is bound to the node's id when it is made: ``node:<name>`` is stored as
``node:<id>`` of the node holding that name then, so a node that takes the name later gets
nothing.
"""

from __future__ import annotations

import hashlib
import logging
import re
from datetime import datetime, timedelta
from typing import Annotated, Any

import jwt
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, delete, func, insert, or_, select, update

from stockade import statements
from stockade.cluster.grants import Selector, granted, parse_labels, parse_selector
from stockade.cluster.secret_store import KeyRing, SecretStoreError
from stockade.errors import InputError
from stockade.evidence.duplication import seal_secret, unsealable_pcr
from stockade.evidence.errors import EvidenceError
from stockade.evidence.pcr_selection import BankSelection, PcrSelection
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.public import TpmPublic
from stockade.logs import fields
from stockade.verifier.errors import (
    BadRequest,
    ConfigurationError,
    Conflict,
    Forbidden,
    NotFound,
    Unavailable,
)
from stockade.verifier.events import record_event
from stockade.verifier.metrics import metrics_of
from stockade.verifier.models import Node, Secret, SecretGrant, SecretRelease
from stockade.verifier.node_auth import require_node
from stockade.verifier.nodes import node_json, parse_moment
from stockade.verifier.operator_actions import record_action
from stockade.verifier.operator_auth import OperatorActor, ReaderActor, require_operator
from stockade.verifier.service import Service, service_of
from stockade.verifier.standing import node_standing
from stockade.verifier.wire import decode_b64, rfc3339

log = logging.getLogger(__name__)
router = APIRouter(tags=["secrets"])
operator = APIRouter(tags=["secrets"], dependencies=[Depends(require_operator)])

# How long a release statement verifies: the agent checks it on receipt, not later.
RELEASE_VALIDITY = timedelta(minutes=5)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
SecretName = Annotated[str, Path(max_length=255)]
NodeId = Annotated[str, Path(max_length=64)]


def _name(name: str) -> str:
    if not _NAME.match(name):
        raise BadRequest(f"secret name {name!r}: letters, digits, '.', '_' and '-'", code="name")
    return name


def _ring(service: Service) -> KeyRing:
    if service.key_ring is None:
        raise Unavailable(
            "no key-encryption key is configured (stockade verifier serve --kek-file, or "
            "$STOCKADE_KEK): secrets can be neither stored nor released",
            code="kek",
        )
    return service.key_ring


def check_secrets_readable(service: Service) -> None:
    """Refuse to start when stored secrets are under a KEK this verifier was not given: a wrong
    key is a clear error, and nothing stored is touched."""
    with service.engine.connect() as connection:
        rows = connection.execute(select(Secret.kek_id, func.count()).group_by(Secret.kek_id)).all()
    missing = {
        kek_id: count
        for kek_id, count in rows
        if not (service.key_ring is not None and service.key_ring.knows(kek_id))
    }
    if not missing:
        return
    listed = ", ".join(f"{count} under {kek_id}" for kek_id, count in sorted(missing.items()))
    configured = (
        ", ".join(sorted(service.key_ring.keys)) if service.key_ring is not None else "none"
    )
    raise ConfigurationError(
        f"stored secrets are encrypted under key-encryption keys this verifier was not given "
        f"({listed}; configured: {configured}). Start it with the right --kek-file (and "
        f"--previous-kek-file during a rotation); nothing was changed."
    )


# -- operator: the store -------------------------------------------------------------------


class SecretValue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str = Field(description="base64 of the secret bytes (at most 64 KiB)")


class GrantBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    selector: str = Field(
        max_length=512,
        description="node:<name or id> (stored as node:<id>) or label:<key>=<value>",
    )


class LabelsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: dict[str, str]


def _operator_action(what: str, actor: str, **details: object) -> None:
    """One log line per change to the secret store, naming the operator credential (secrets
    belong to no node, so these are not node events); never a value."""
    log.info(what, extra=fields(actor=actor, **details))


def _grants(connection: Any, name: str) -> list[str]:
    return list(
        connection.execute(
            select(SecretGrant.selector)
            .where(SecretGrant.secret_name == name)
            .order_by(SecretGrant.selector)
        ).scalars()
    )


@operator.put("/v1/secrets/{name}")
def put_secret(
    name: SecretName, body: SecretValue, request: Request, actor: OperatorActor
) -> dict[str, Any]:
    """Store a new version of a secret (its grants are kept)."""
    service = service_of(request)
    ring = _ring(service)
    value = decode_b64(body.value, "value")
    now = service.now()
    with service.engine.begin() as connection:
        current = connection.execute(
            select(Secret.version).where(Secret.name == _name(name)).with_for_update()
        ).first()
        version = 1 if current is None else current.version + 1
        try:
            kek_id, ciphertext = ring.encrypt(name, version, value)
        except InputError as error:
            raise BadRequest(str(error), code="too-large") from None
        if current is None:
            connection.execute(
                insert(Secret).values(
                    name=name,
                    version=version,
                    kek_id=kek_id,
                    ciphertext=ciphertext,
                    created_at=now,
                    updated_at=now,
                )
            )
        else:
            connection.execute(
                update(Secret)
                .where(Secret.name == name)
                .values(version=version, kek_id=kek_id, ciphertext=ciphertext, updated_at=now)
            )
        grants = _grants(connection, name)
        record_action(
            connection, service, actor.name, "secret.put", name, f"version {version}, kek {kek_id}"
        )
    _operator_action("secret stored", actor.name, secret=name, version=version)
    return {"name": name, "version": version, "kek_id": kek_id, "grants": grants}


@operator.get("/v1/secrets")
def list_secrets(request: Request) -> dict[str, list[dict[str, Any]]]:
    """Names, versions and grants: never values."""
    service = service_of(request)
    with service.engine.connect() as connection:
        rows = connection.execute(
            select(Secret.name, Secret.version, Secret.kek_id, Secret.updated_at).order_by(
                Secret.name
            )
        ).all()
        grants: dict[str, list[str]] = {}
        for secret_name, selector in connection.execute(
            select(SecretGrant.secret_name, SecretGrant.selector).order_by(SecretGrant.selector)
        ):
            grants.setdefault(secret_name, []).append(selector)
    return {
        "secrets": [
            {
                "name": row.name,
                "version": row.version,
                "kek_id": row.kek_id,
                "grants": grants.get(row.name, []),
                "updated_at": rfc3339(row.updated_at),
            }
            for row in rows
        ]
    }


@operator.delete("/v1/secrets/{name}")
def delete_secret(name: SecretName, request: Request, actor: OperatorActor) -> dict[str, Any]:
    service = service_of(request)
    with service.engine.begin() as connection:
        connection.execute(delete(SecretGrant).where(SecretGrant.secret_name == name))
        if connection.execute(delete(Secret).where(Secret.name == name)).rowcount != 1:
            raise NotFound(f"no secret {name!r}", code="secret")
        record_action(connection, service, actor.name, "secret.delete", name)
    _operator_action("secret deleted", actor.name, secret=name)
    return {"name": name, "deleted": True}


def _bound(connection: Connection, selector: Selector) -> Selector:
    """A ``node:<name or id>`` selector bound to the id of the node it names now (a label
    selector unchanged): 404 ``node`` when no node has that id or name, 409 ``node`` when it
    is one node's id and another's name (names that parse as ids are refused at enrollment,
    but rows from before may exist)."""
    if selector.kind != "node":
        return selector
    ids = set(
        connection.execute(
            select(Node.id).where(or_(Node.id == selector.key, Node.name == selector.key))
        ).scalars()
    )
    if not ids:
        raise NotFound(
            f"no node has the id or name {selector.key!r}: a node grant is bound to an "
            "enrolled node's id (or grant by label:<key>=<value>)",
            code="node",
        )
    if len(ids) > 1:
        raise Conflict(
            f"{selector.key!r} is the id of one node and the name of another: grant by the id",
            code="node",
        )
    return Selector("node", ids.pop())


@operator.post("/v1/secrets/{name}/grants")
def grant(
    name: SecretName, body: GrantBody, request: Request, actor: OperatorActor
) -> dict[str, Any]:
    """Grant a secret. ``node:<name or id>`` is bound to the node's id now and stored as
    ``node:<id>``: it keeps selecting that node whatever it is called later, and never a
    node that takes the name afterwards."""
    service = service_of(request)
    try:
        parsed = parse_selector(body.selector)
    except InputError as error:
        raise BadRequest(str(error), code="selector") from None
    with service.engine.begin() as connection:
        if connection.execute(select(Secret.name).where(Secret.name == name)).first() is None:
            raise NotFound(f"no secret {name!r}", code="secret")
        selector = str(_bound(connection, parsed))
        detail = f"selector {selector}"
        if selector not in _grants(connection, name):
            connection.execute(
                insert(SecretGrant).values(
                    secret_name=name, selector=selector, created_at=service.now()
                )
            )
            _operator_action("secret granted", actor.name, secret=name, selector=selector)
        else:
            detail += " (already granted: unchanged)"
        answer = {"name": name, "grants": _grants(connection, name)}
        record_action(connection, service, actor.name, "secret.grant", name, detail)
        return answer


@operator.delete("/v1/secrets/{name}/grants")
def revoke_grant(
    name: SecretName,
    request: Request,
    actor: OperatorActor,
    selector: Annotated[str, Query(max_length=512)],
) -> dict[str, Any]:
    """Remove a grant: the stored selector, or for ``node:<name>`` the grant bound to the id of
    the node holding that name now."""
    service = service_of(request)
    try:
        parsed = parse_selector(selector)
    except InputError as error:
        raise BadRequest(str(error), code="selector") from None
    normalized = str(parsed)
    with service.engine.begin() as connection:
        candidates = [normalized]
        if parsed.kind == "node":
            candidates += [
                f"node:{node_id}"
                for node_id in connection.execute(
                    select(Node.id).where(Node.name == parsed.key)
                ).scalars()
            ]
        removed = connection.execute(
            delete(SecretGrant).where(
                SecretGrant.secret_name == name, SecretGrant.selector.in_(candidates)
            )
        ).rowcount
        if not removed:
            raise NotFound(f"secret {name!r} has no grant {normalized}", code="grant")
        _operator_action("secret grant revoked", actor.name, secret=name, selector=normalized)
        answer = {"name": name, "grants": _grants(connection, name)}
        record_action(
            connection, service, actor.name, "secret.revoke", name, f"selector {normalized}"
        )
        return answer


@operator.post("/v1/secrets/rekey")
def rekey(request: Request, actor: OperatorActor) -> dict[str, Any]:
    """Re-encrypt every secret not under the current KEK (one transaction per secret, so the
    verifier keeps serving throughout); afterwards the previous KEKs can be dropped."""
    service = service_of(request)
    ring = _ring(service)
    with service.engine.connect() as connection:
        names = list(
            connection.execute(
                select(Secret.name).where(Secret.kek_id != ring.current.kek_id)
            ).scalars()
        )
    done = 0
    for name in names:
        with service.engine.begin() as connection:
            row = connection.execute(
                select(Secret.version, Secret.kek_id, Secret.ciphertext)
                .where(Secret.name == name)
                .with_for_update()
            ).first()
            if row is None or row.kek_id == ring.current.kek_id:
                continue
            try:
                plaintext = ring.decrypt(name, row.version, row.kek_id, row.ciphertext)
            except SecretStoreError as error:
                raise Unavailable(str(error), code="kek") from None
            kek_id, ciphertext = ring.encrypt(name, row.version, plaintext)
            connection.execute(
                update(Secret)
                .where(Secret.name == name)
                .values(kek_id=kek_id, ciphertext=ciphertext)
            )
            done += 1
    with service.engine.begin() as connection:
        record_action(
            connection, service, actor.name, "secret.rekey", ring.current.kek_id,
            f"{done} secrets re-encrypted under kek {ring.current.kek_id}",
        )  # fmt: skip
    _operator_action("secrets rekeyed", actor.name, rekeyed=done, kek_id=ring.current.kek_id)
    return {"rekeyed": done, "kek_id": ring.current.kek_id}


@operator.put("/v1/nodes/{node_id}/labels")
def set_labels(
    node_id: NodeId, body: LabelsBody, request: Request, actor: OperatorActor
) -> dict[str, Any]:
    """Replace a node's labels (grants select nodes by them). A change is an event of the
    node (its state unchanged) naming the operator, as grants by label follow it."""
    service = service_of(request)
    try:
        labels = parse_labels([f"{key}={value}" for key, value in body.labels.items()])
    except InputError as error:
        raise BadRequest(str(error), code="labels") from None
    with service.sessions() as session, session.begin():
        node = session.get(Node, node_id)
        if node is None:
            raise NotFound(f"no node {node_id}", code="node")
        previous = dict(node.labels or {})
        now = service.now()
        node.labels = labels
        node.updated_at = now
        shown = ", ".join(f"{key}={value}" for key, value in sorted(labels.items()))
        if previous != labels:
            record_event(
                session, node, node.state, node.state, f"labels set: {shown or 'none'}", now,
                actor=actor.name,
            )  # fmt: skip
        session.flush()
        answer = node_json(node, service)
        unchanged = "" if previous != labels else " (unchanged)"
        record_action(
            session, service, actor.name, "node.labels", node.id,
            f"labels: {shown or 'none'}{unchanged}",
        )  # fmt: skip
        return answer


# -- nodes: release ------------------------------------------------------------------------


def _sealable(values: PcrValues) -> tuple[PcrSelection, PcrValues]:
    """The attested PCRs a secret is sealed to: all but the execution PCR, which every
    container start extends (a secret sealed to it would stop unsealing at the next one), and
    the resettable PCRs 16-23, which bind nothing (the agent refuses a blob sealed to them)."""
    banks = {
        alg: {index: value for index, value in bank.items() if unsealable_pcr(index) is None}
        for alg, bank in values.banks.items()
    }
    banks = {alg: bank for alg, bank in banks.items() if bank}
    selection = PcrSelection(
        tuple(BankSelection(alg, tuple(sorted(bank))) for alg, bank in banks.items())
    )
    return selection, PcrValues(banks)


@router.post("/v1/nodes/{node_id}/secrets/{name}", dependencies=[Depends(require_node)])
def release_secret(node_id: NodeId, name: SecretName, request: Request) -> dict[str, Any]:
    """The secret sealed to the node's EK, its channel key and the PCR values of its latest
    affirming result.

    Only that node's TPM, in exactly that attested state, in a policy session its channel key
    authorized (the agent's key file), can import and unseal what is returned. A node
    enrolled before the channel (no channel key) gets 403 ``channel``: it must enroll again.
    ``release`` is the signed secret-release statement for exactly this blob: without it the
    agent keeps nothing.
    """
    service = service_of(request)
    ring = _ring(service)
    now = service.now()
    with service.engine.connect() as connection:
        standing = node_standing(connection, node_id, now)
        standing.require_good(now, f"secret {name!r}")
        if standing.channel_key_public is None:
            raise Forbidden(
                f"node {standing.name} ({standing.node_id}) has no channel key, so no secret "
                "can be sealed to it (it enrolled before secrets were bound to one): enroll "
                "the node again",
                code="channel",
            )
        if not standing.ek_public:
            raise Forbidden(
                f"node {standing.name} ({standing.node_id}) enrolled by a cloud AK certificate: "
                "the verifier knows no EK of its TPM to seal a secret to",
                code="no-ek",
            )
        secret = connection.execute(
            select(Secret.version, Secret.kek_id, Secret.ciphertext).where(Secret.name == name)
        ).first()
        selectors = _grants(connection, name) if secret is not None else []
    # The same answer for a missing secret and a missing grant: nodes learn nothing of others.
    grant_used = granted(selectors, standing.node_id, standing.labels)
    if secret is None or grant_used is None:
        raise Forbidden(
            f"secret {name!r} is not granted to node {standing.name} ({standing.node_id})",
            code="not-granted",
        )
    assert standing.pcrs is not None and standing.result_id is not None
    try:
        payload = ring.decrypt(name, secret.version, secret.kek_id, secret.ciphertext)
    except SecretStoreError as error:
        raise Unavailable(str(error), code="kek") from None
    try:
        selection, pcrs = _sealable(PcrValues.from_json(standing.pcrs))
        channel_key = TpmPublic.unmarshal_tpm2b(standing.channel_key_public)
        sealed = seal_secret(
            TpmPublic.unmarshal_tpm2b(standing.ek_public),
            payload,
            selection,
            pcrs,
            authorizer_name=channel_key.name(),
        )
    except EvidenceError as error:
        log.error("sealing secret %r for node %s failed: %s", name, node_id, error)
        raise Unavailable(f"cannot seal to node {standing.name}: {error}", code="seal") from None
    with service.engine.begin() as connection:
        connection.execute(
            insert(SecretRelease).values(
                secret_name=name,
                secret_version=secret.version,
                node_id=standing.node_id,
                result_id=standing.result_id,
                time=now,
            )
        )
    metrics_of(service).secret_released()
    return {
        "name": name,
        "version": secret.version,
        "node_id": standing.node_id,
        "result_id": standing.result_id,
        "granted_by": grant_used,
        "sealed": sealed.to_json(),
        "release": _release_statement(
            service,
            statements.SecretRelease(
                node_id=standing.node_id,
                name=name,
                version=secret.version,
                sealed_sha256=hashlib.sha256(sealed.marshal()).hexdigest(),
                result_id=standing.result_id,
                pcr_selection={bank.bank_name: bank.pcrs for bank in selection.banks},
            ),
            now,
        ),
    }


def _release_statement(service: Service, release: statements.SecretRelease, now: datetime) -> str:
    """The signed secret-release statement (``typ`` stockade-secret-release+jwt)."""
    return jwt.encode(
        statements.secret_release_claims(release, now, now + RELEASE_VALIDITY),
        service.signing_key.private_key,
        algorithm="ES256",
        headers={"kid": service.signing_key.kid, "typ": statements.SECRET_RELEASE_TYPE},
    )


# -- audit: releases -------------------------------------------------------------------------

MAX_RELEASES_PAGE = 1000


@router.get("/v1/secret-releases")
def list_releases(
    request: Request,
    _actor: ReaderActor,
    since: Annotated[str | None, Query(max_length=64, description="RFC 3339, inclusive")] = None,
    until: Annotated[str | None, Query(max_length=64, description="RFC 3339, exclusive")] = None,
    node: Annotated[str | None, Query(max_length=255, description="node id or name")] = None,
    secret: Annotated[str | None, Query(max_length=255, description="secret name")] = None,
    after: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_RELEASES_PAGE)] = 500,
) -> dict[str, Any]:
    """The release audit (``secret_releases``): which version of which secret went to which
    node under which result, when; never a value. Oldest first by release id; ``after`` is
    the previous page's ``next`` (None: last page). A reader or operator credential."""
    service = service_of(request)
    start, stop = parse_moment(since, "since"), parse_moment(until, "until")
    query = (
        select(
            SecretRelease.id,
            SecretRelease.time,
            SecretRelease.secret_name,
            SecretRelease.secret_version,
            SecretRelease.node_id,
            SecretRelease.result_id,
            Node.name,
        )
        .join(Node, Node.id == SecretRelease.node_id)
        .order_by(SecretRelease.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(SecretRelease.id > after)
    if start is not None:
        query = query.where(SecretRelease.time >= start)
    if stop is not None:
        query = query.where(SecretRelease.time < stop)
    if node:
        query = query.where((Node.id == node) | (Node.name == node))
    if secret:
        query = query.where(SecretRelease.secret_name == secret)
    with service.engine.connect() as connection:
        rows = connection.execute(query).all()
    releases = [
        {
            "release_id": row.id,
            "time": rfc3339(row.time),
            "secret": row.secret_name,
            "version": row.secret_version,
            "node_id": row.node_id,
            "node_name": row.name,
            "result_id": row.result_id,
        }
        for row in rows
    ]
    return {
        "releases": releases,
        "next": releases[-1]["release_id"] if len(rows) == limit else None,
    }


router.include_router(operator)
