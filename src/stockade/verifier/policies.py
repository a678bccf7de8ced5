"""Policy documents: every apply stores a new version of its id; one id is active
(``PUT /v1/active-policy``, stored in the database so every replica agrees), and its newest
version is what nodes are appraised under. Applying another id never changes the active one;
the active id cannot be deleted."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from stockade.errors import InputError
from stockade.evidence.algorithms import Alg
from stockade.evidence.errors import EvidenceError
from stockade.evidence.pcr_values import PcrValues
from stockade.logs import fields
from stockade.strict_json import canonical_json
from stockade.strict_yaml import load_yaml
from stockade.verifier.errors import Conflict, NotFound, Unprocessable
from stockade.verifier.models import EvidenceBlob, Node, Policy, PolicyActivation, Result
from stockade.verifier.operator_actions import record_action
from stockade.verifier.operator_auth import OperatorActor, ReaderActor, require_operator
from stockade.verifier.service import Service, active_policy_id, service_of
from stockade.verifier.wire import rfc3339

log = logging.getLogger(__name__)
router = APIRouter(tags=["policies"])

PolicyId = Annotated[
    str, Path(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]


def parse_document(raw: bytes, content_type: str) -> dict[str, Any]:
    """A policy document from JSON or (``application/yaml``) YAML; must be a mapping."""
    try:
        # Stored as JSON: YAML's integer keys (a captured policy's PCRs) become strings, as
        # they would over JSON, so the same document is the same version either way; a
        # repeated key or an alias (a YAML bomb) is refused.
        document = load_yaml(raw, "policy document") if "yaml" in content_type else json.loads(raw)
    except (ValueError, InputError) as error:
        raise Unprocessable(
            f"policy document is not valid JSON/YAML: {error}", code="policy"
        ) from None
    if not isinstance(document, dict):
        raise Unprocessable("policy document must be a mapping", code="policy")
    return document


def apply_policy(
    service: Service, session: Session, policy_id: str, document: dict[str, Any], now: datetime
) -> Policy:
    """Validate with the appraisal core and store as the next version (unless unchanged)."""
    if document.get("id") != policy_id:
        raise Unprocessable(
            f"document id {document.get('id')!r} does not match {policy_id!r}", code="policy"
        )
    latest = _latest(session, policy_id)
    if latest is not None and latest.document == document:
        return latest
    version = (
        session.scalar(select(func.max(Policy.version)).where(Policy.id == policy_id)) or 0
    ) + 1
    appraiser = service.require_appraiser()
    try:
        appraiser.build_references(appraiser.parse_policy(document, version))
    except Exception as error:
        raise Unprocessable(f"policy {policy_id!r} is invalid: {error}", code="policy") from None
    if session.get(PolicyActivation, 1) is None:
        # The first activation is of the policy in force before this one: storing another
        # id never changes what nodes are appraised under.
        in_force = active_policy_id(session, service.config.policy_id) or policy_id
        session.add(PolicyActivation(singleton=1, policy_id=in_force, activated_at=now))
    row = Policy(id=policy_id, version=version, document=document, created_at=now)
    session.add(row)
    session.flush()
    return row


def _candidate(
    service: Service, session: Session, policy_id: str, document: dict[str, Any]
) -> tuple[Any, Any, int]:
    """The document as the next version of ``policy_id`` would be, parsed and with its
    references built (422 ``policy`` as ``apply_policy`` would refuse it), not stored."""
    if document.get("id") != policy_id:
        raise Unprocessable(
            f"document id {document.get('id')!r} does not match {policy_id!r}", code="policy"
        )
    version = (
        session.scalar(select(func.max(Policy.version)).where(Policy.id == policy_id)) or 0
    ) + 1
    appraiser = service.require_appraiser()
    try:
        parsed = appraiser.parse_policy(document, version)
        return parsed, appraiser.build_references(parsed), version
    except Exception as error:
        raise Unprocessable(f"policy {policy_id!r} is invalid: {error}", code="policy") from None


def stored_quote(result: Result | None) -> PcrValues | None:
    """The sha256 PCR values a stored result's verified quote carried (None: none stored)."""
    if result is None or not result.pcrs:
        return None
    try:
        bank = {int(index): bytes.fromhex(value) for index, value in result.pcrs["sha256"].items()}
        return PcrValues({Alg.SHA256: bank})
    except (KeyError, ValueError, AttributeError, EvidenceError):
        return None


def dry_run(
    service: Service, session: Session, policy_id: str, document: dict[str, Any]
) -> dict[str, Any]:
    """Every enrolled (not revoked) node's latest result re-appraised under the candidate
    document (``appraise.reappraise_quoted``: the quoted PCR values the result stored),
    nothing stored. A result that kept the release envelope the node sent (migration 0015)
    is judged with it as appraisal would (``appraise.reappraise_signed``, with the stored
    event log): a release the candidate does not list but whose signers it names. A node
    whose status would differ from its latest result's is a change, with the first reason;
    one whose stored values cannot tell (no verified quote stored, a PCR the candidate
    quotes that was not quoted, a captured platform, a signer-only candidate without a
    stored envelope) is unknown."""
    from stockade.appraisal import policy as core_policy
    from stockade.appraisal.appraise import ReferenceSet, reappraise_quoted, reappraise_signed

    policy, references, version = _candidate(service, session, policy_id, document)
    if not isinstance(policy, core_policy.Policy):
        raise Unprocessable("dry runs need the core appraiser", code="policy")
    nodes = session.scalars(
        select(Node).where(Node.revoked.is_(False)).order_by(Node.name, Node.id)
    ).all()
    changes: list[dict[str, Any]] = []
    unknown: list[dict[str, Any]] = []
    unchanged = 0
    for node in nodes:
        result = session.get(Result, node.latest_result_id) if node.latest_result_id else None
        current = result.status if result is not None else None
        quoted = stored_quote(result)
        row: dict[str, Any] = {
            "node_id": node.id, "name": node.name, "state": node.state, "from": current,
            "result_id": result.id if result is not None else None,
        }  # fmt: skip
        if quoted is None:
            unknown.append({**row, "reason": "no verified quote stored for this node"})
            continue
        # The stored log and envelope are read only when they can matter: a signer rule and
        # a boot no listed release matches.
        unlisted = isinstance(references, ReferenceSet) and references.lookup(quoted) is None
        signed = _stored_signed_evidence(session, result) if policy.signers and unlisted else None
        outcome = (
            reappraise_signed(policy, references, quoted, *signed)
            if signed is not None
            else reappraise_quoted(policy, references, quoted)
        )
        if outcome.status is None:
            unknown.append({**row, "reason": outcome.reasons[0]})
        elif outcome.status.value != current:
            reason = outcome.reasons[0] if outcome.reasons else f"matches {outcome.matched_release}"
            changes.append({**row, "to": outcome.status.value, "reason": reason})
        else:
            unchanged += 1
    return {
        "id": policy_id,
        "version": version,
        "ref": f"{policy_id}@{version}",
        "stored": False,
        "nodes": len(nodes),
        "changed": len(changes),
        "unchanged": unchanged,
        "unknown": len(unknown),
        "changes": changes,
        "unknown_nodes": unknown,
    }


def _stored_signed_evidence(session: Session, result: Result | None) -> tuple[bytes, bytes] | None:
    """The event log and release envelope a result kept (``evidence_blobs``, each checked
    against its digest), or None: no envelope was sent, or the result predates 0015."""
    if result is None or result.release_envelope_digest is None or not result.event_log_digest:
        return None
    digests = (result.event_log_digest, result.release_envelope_digest)
    query = select(EvidenceBlob.digest, EvidenceBlob.body).where(EvidenceBlob.digest.in_(digests))
    bodies = {digest: bytes(body) for digest, body in session.execute(query)}
    log, envelope = (bodies.get(digest) for digest in digests)
    if log is None or envelope is None:
        return None
    if any(hashlib.sha256(body).hexdigest() != digest for digest, body in bodies.items()):
        return None
    return bytes(log), bytes(envelope)


def _latest(session: Session, policy_id: str) -> Policy | None:
    return session.scalars(
        select(Policy).where(Policy.id == policy_id).order_by(Policy.version.desc()).limit(1)
    ).first()


def _document_digest(document: dict[str, Any]) -> str:
    """SHA-256 (hex) of a stored policy document in canonical JSON: what an operator action
    records of it (the document itself is read with ``GET /v1/policies/{id}?version=``)."""
    return hashlib.sha256(canonical_json(document)).hexdigest()


def policy_json(row: Policy, *, document: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": row.id,
        "version": row.version,
        "ref": f"{row.id}@{row.version}",
        "created_at": rfc3339(row.created_at),
    }
    if document:
        body["document"] = row.document
    return body


@router.put("/v1/policies/{policy_id}")
async def put_policy(policy_id: PolicyId, request: Request, actor: OperatorActor) -> dict[str, Any]:
    """Body: the policy document, JSON or YAML (``Content-Type: application/yaml``)."""
    import anyio.to_thread

    service = service_of(request)
    document = parse_document(await request.body(), request.headers.get("content-type", ""))

    def store() -> dict[str, Any]:
        try:
            with service.transaction() as session:
                stored = apply_policy(service, session, policy_id, document, service.now())
                answer = policy_json(stored, document=True)
                record_action(
                    session, service, actor.name, "policy.store",
                    f"{stored.id}@{stored.version}", f"sha256 {_document_digest(stored.document)}",
                )  # fmt: skip
        finally:
            service.invalidate_policy()
        log.info(
            "policy stored",
            extra=fields(actor=actor.name, policy=stored.id, version=stored.version),
        )
        return answer

    return await anyio.to_thread.run_sync(store)


@router.post("/v1/policies/{policy_id}/dry-run", dependencies=[Depends(require_operator)])
async def dry_run_policy(policy_id: PolicyId, request: Request) -> dict[str, Any]:
    """Body: a policy document, as for ``PUT``. Nothing is stored: how many enrolled nodes
    would change status under it, with the first reason for each (``dry_run``)."""
    import anyio.to_thread

    service = service_of(request)
    document = parse_document(await request.body(), request.headers.get("content-type", ""))

    def run() -> dict[str, Any]:
        with service.sessions() as session:
            return dry_run(service, session, policy_id, document)

    return await anyio.to_thread.run_sync(run)


@router.get("/v1/policies")
def list_policies(request: Request, _actor: ReaderActor) -> dict[str, list[dict[str, Any]]]:
    service = service_of(request)
    with service.sessions() as session:
        ids = session.scalars(select(Policy.id).distinct().order_by(Policy.id)).all()
        rows = [row for row in (_latest(session, pid) for pid in ids) if row is not None]
        return {"policies": [policy_json(row, document=False) for row in rows]}


@router.get("/v1/policies/{policy_id}")
def show_policy(
    policy_id: PolicyId,
    request: Request,
    _actor: ReaderActor,
    version: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    """The latest version, or ``?version=N``."""
    service = service_of(request)
    with service.sessions() as session:
        row = (
            _latest(session, policy_id)
            if version is None
            else session.get(Policy, (policy_id, version))
        )
        if row is None:
            suffix = "" if version is None else f"@{version}"
            raise NotFound(f"no policy {policy_id}{suffix}", code="policy")
        return policy_json(row, document=True)


class Activation(BaseModel):
    id: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def activate_policy(session: Session, policy_id: str, now: datetime) -> PolicyActivation:
    """Make ``policy_id`` (stored: else 404) the active policy of every replica."""
    if _latest(session, policy_id) is None:
        raise NotFound(f"no policy {policy_id}", code="policy")
    row = session.get(PolicyActivation, 1)
    if row is None:
        row = PolicyActivation(singleton=1, policy_id=policy_id, activated_at=now)
        session.add(row)
    else:
        row.policy_id, row.activated_at = policy_id, now
    session.flush()
    return row


def _activation_json(session: Session, row: PolicyActivation) -> dict[str, Any]:
    latest = _latest(session, row.policy_id)
    return {
        "id": row.policy_id,
        "version": latest.version if latest is not None else None,
        "activated_at": rfc3339(row.activated_at),
    }


@router.put("/v1/active-policy")
def put_active_policy(body: Activation, request: Request, actor: OperatorActor) -> dict[str, Any]:
    """Activate a stored policy id on every replica (each notices within
    ``policy_refresh_seconds``; this one at once)."""
    service = service_of(request)
    try:
        with service.transaction() as session:
            answer = _activation_json(session, activate_policy(session, body.id, service.now()))
            subject = body.id if answer["version"] is None else f"{body.id}@{answer['version']}"
            record_action(session, service, actor.name, "policy.activate", subject)
    finally:
        service.invalidate_policy()
    log.info("policy activated", extra=fields(actor=actor.name, policy=body.id))
    return answer


@router.get("/v1/active-policy")
def get_active_policy(request: Request, _actor: ReaderActor) -> dict[str, Any]:
    with service_of(request).sessions() as session:
        row = session.get(PolicyActivation, 1)
        if row is None:
            raise NotFound("no policy has been activated", code="policy")
        return _activation_json(session, row)


@router.delete("/v1/policies/{policy_id}", status_code=204, response_class=Response)
def delete_policy(policy_id: PolicyId, request: Request, actor: OperatorActor) -> Response:
    """Delete every version of a policy that is not the active one (409 if it is)."""
    service = service_of(request)
    with service.transaction() as session:
        if _latest(session, policy_id) is None:
            raise NotFound(f"no policy {policy_id}", code="policy")
        if active_policy_id(session, service.config.policy_id) == policy_id:
            raise Conflict(
                f"{policy_id} is the active policy; activate another first", code="policy-active"
            )
        versions = session.scalar(select(func.count()).where(Policy.id == policy_id))
        session.execute(delete(Policy).where(Policy.id == policy_id))
        record_action(
            session, service, actor.name, "policy.delete", policy_id, f"{versions} versions"
        )
    service.invalidate_policy()
    log.info("policy deleted", extra=fields(actor=actor.name, policy=policy_id))
    return Response(status_code=204)
