"""``GET /v1/nodes/{node_id}/boot?result=RESULT_ID``: a result's boot beside its reference.

For the dashboard's node page (reader credential): the event log the node sent with the
result (kept content-addressed in ``evidence_blobs`` since migration 0015), aligned PCR by
PCR and event by event with the closest reference of the policy version the result names
(``appraisal.boot_comparison.compare_boot``), and, for a policy accepting releases by
signer, the release the stored envelope names. References come from the verifier's own
cache of the active policy's versions (``Service.active_policy``) when the version is
there, else are built once and kept (``REFERENCES_KEPT`` versions per app); a request
never rebuilds a version already built.

Nothing the node sent is returned raw: descriptions are printable ASCII, bounded. A
result stored before 0015 (no evidence kept), whose policy version is gone, or whose
stored evidence does not hash to its digest is ``available: false`` with the reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from stockade.lru import LruCache
from stockade.strict_json import canonical_json
from stockade.verifier.errors import NotFound
from stockade.verifier.models import EvidenceBlob, Node, Policy, Result
from stockade.verifier.nodes import release_json
from stockade.verifier.operator_auth import ReaderActor
from stockade.verifier.policies import stored_quote
from stockade.verifier.service import Service, service_of

router = APIRouter(tags=["nodes"])

REFERENCES_KEPT = 8  # policy versions' references kept per app, beyond the service's own
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
NodeId = Annotated[str, Path(min_length=1, max_length=64, pattern=_ID)]
ResultId = Annotated[str | None, Query(min_length=1, max_length=64, pattern=_ID)]
NO_STORE = {"Cache-Control": "no-store"}
BEFORE_0015 = (
    "this result was stored before the verifier kept boot evidence (migration 0015): only "
    "its status and reasons are known"
)


@dataclass(frozen=True)
class _Built:
    """A policy version parsed and its references built (or why they cannot be)."""

    policy: Any
    references: Any
    problem: str | None = None


class ReferenceCache(LruCache[tuple[str, int, str], _Built]):
    """Policy versions' references for boot views, least recently used dropped past
    ``kept``; keyed by (id, version, document digest), so a version deleted and stored
    again with another document is never confused with the old one."""

    def __init__(self, kept: int = REFERENCES_KEPT) -> None:
        super().__init__(kept)


def reference_cache(request: Request) -> ReferenceCache:
    """The app's cache (``app.state.boot_references``, made with the app)."""
    cache = request.app.state.boot_references
    assert isinstance(cache, ReferenceCache)
    return cache


def _references(
    service: Service, cache: ReferenceCache, session: Session, policy_ref: str
) -> Callable[[], _Built]:
    """The policy version ``policy_ref`` (``id@version``) names, with its references: read
    now (in ``session``), built when called (after the session is given back)."""
    policy_id, _, version_text = policy_ref.rpartition("@")
    if not policy_id or not version_text.isdigit():
        problem = _Built(None, None, f"the result names no stored policy version ({policy_ref!r})")
        return lambda: problem
    version = int(version_text)
    row = session.get(Policy, (policy_id, version))
    if row is None:
        gone = _Built(None, None, f"policy {policy_ref} is no longer stored")
        return lambda: gone
    from stockade.appraisal.appraise import CapturedReferences, ReferenceSet
    from stockade.appraisal.policy import Policy as CorePolicy

    # The references appraisal used, when the service built them for this version.
    known = service.cached_references(policy_id, version)
    if known is not None and isinstance(known.policy, CorePolicy):
        cached = _Built(known.policy, known.references)
        return lambda: cached
    document = row.document

    def build() -> _Built:
        appraiser = service.require_appraiser()
        try:
            policy = appraiser.parse_policy(document, version)
            if not isinstance(policy, CorePolicy):
                return _Built(None, None, "boot comparison needs the core appraiser")
            references = appraiser.build_references(policy)
        except Exception as error:
            return _Built(None, None, f"policy {policy_ref}'s references cannot be built: {error}")
        if not isinstance(references, ReferenceSet | CapturedReferences):
            return _Built(None, None, "boot comparison needs the core appraiser")
        return _Built(policy, references)

    key = (policy_id, version, hashlib.sha256(canonical_json(document)).hexdigest())
    return lambda: cache.get(key, build)


def _blob(session: Session, digest: str | None, what: str) -> bytes | str | None:
    """The stored body (its sha256 checked), None when none is named, or why not."""
    if digest is None:
        return None
    body = session.scalar(select(EvidenceBlob.body).where(EvidenceBlob.digest == digest))
    if body is None:
        return f"the stored {what} ({digest[:16]}...) is missing"
    if hashlib.sha256(body).hexdigest() != digest:
        return f"the stored {what} does not match its digest {digest[:16]}..."
    return bytes(body)


def _result(session: Session, node: Node, result_id: str | None) -> Result:
    wanted = result_id if result_id is not None else node.latest_result_id
    result = session.get(Result, wanted) if wanted is not None else None
    if result is None or result.node_id != node.id:
        if result_id is None:
            raise NotFound(f"node {node.id} has no result", code="result")
        raise NotFound(f"no result {result_id} of node {node.id}", code="result")
    return result


def boot_view(
    service: Service, cache: ReferenceCache, node_id: str, result_id: str | None
) -> dict[str, Any]:
    """The answer of ``GET /v1/nodes/{node_id}/boot``."""
    with service.sessions() as session:
        node = session.get(Node, node_id)
        if node is None:
            raise NotFound(f"no node {node_id}", code="node")
        result = _result(session, node, result_id)
        answer: dict[str, Any] = {
            "result_id": result.id,
            "node_id": node.id,
            "status": result.status,
            "policy": result.policy_ref,
            "reasons": list(result.reasons),
            "release": release_json(
                result.release_name,
                result.release_version,
                result.release_security_version,
                result.release_digest,
            ),
            "available": False,
            "unavailable_reason": None,
            "reference": None,
            "notes": [],
            "pcrs": [],
        }
        if result.event_log_digest is None:
            return {**answer, "unavailable_reason": BEFORE_0015}
        log = _blob(session, result.event_log_digest, "event log")
        envelope = _blob(session, result.release_envelope_digest, "release envelope")
        references = _references(service, cache, session, result.policy_ref)
        name = node.name
    built = references()  # built (once per version) with no database connection held
    for problem in (log, envelope, built.problem):
        if isinstance(problem, str):
            return {**answer, "unavailable_reason": problem}
    assert isinstance(log, bytes)
    from stockade.appraisal.boot_comparison import compare_boot

    comparison = compare_boot(
        log,
        built.references,
        stored_quote(result),
        policy=built.policy,
        release_envelope=envelope if isinstance(envelope, bytes) else None,
        node=name,
    )
    if comparison.problem is not None:
        return {**answer, "unavailable_reason": comparison.problem}
    return {**answer, **comparison.to_json(), "available": True}


@router.get("/v1/nodes/{node_id}/boot")
def node_boot(
    node_id: NodeId, request: Request, _actor: ReaderActor, result: ResultId = None
) -> JSONResponse:
    """A result's boot (default: the node's latest) beside the closest reference of the
    policy version it was appraised under: per quoted PCR, the quoted and expected values
    and the node's events aligned with the reference's (``same``, ``differs``, ``missing``,
    ``extra``). 404 ``node`` or ``result`` (also for another node's result)."""
    answer = boot_view(service_of(request), reference_cache(request), node_id, result)
    return JSONResponse(answer, headers=NO_STORE)
