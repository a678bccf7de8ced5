"""Evidence: consume the nonce, appraise under the active policy, store and sign the result."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Path, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, Insert, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from stockade.appraisal.appraise import MAX_RELEASE_ENVELOPE, ReferenceEntry
from stockade.appraisal.decision import conclude, failed_appraisal
from stockade.appraisal.ear import SignedEvidence, ear_claims
from stockade.appraisal.executions import ExecutionState
from stockade.appraisal.node_executions import ExecutionOutcome, appraise_node_executions
from stockade.evidence.attest import ClockInfo
from stockade.evidence.errors import EvidenceError
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.public import TpmPublic
from stockade.logs import fields
from stockade.release.manifest import manifest_digest
from stockade.translog.entries import attestation_result_entry
from stockade.translog.receipt import Receipt
from stockade.verifier.appraiser import Appraisal, Evidence, NodeView, Status
from stockade.verifier.errors import BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge
from stockade.verifier.executions import load_state, store_executions
from stockade.verifier.metrics import metrics_of
from stockade.verifier.models import Event, EvidenceBlob, Node, Result
from stockade.verifier.node_auth import require_node_spending_a_nonce
from stockade.verifier.nonces import consume_nonce, nonce_usable
from stockade.verifier.results import sign_ear
from stockade.verifier.security_events import record_security_event
from stockade.verifier.service import ActivePolicy, Service, service_of
from stockade.verifier.states import NodeState
from stockade.verifier.wire import decode_b64, rfc3339

log = logging.getLogger(__name__)
router = APIRouter(tags=["attestation"])


# The base64 length of the largest release envelope appraisal takes (longer: 422).
_RELEASE_ENVELOPE_B64 = 4 * -(-MAX_RELEASE_ENVELOPE // 3)


class EvidenceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nonce: str = Field(description="base64, as issued")
    quote: str = Field(description="base64 TPMS_ATTEST")
    signature: str = Field(description="base64 TPMT_SIGNATURE")
    pcrs: dict[str, dict[str, str]] = Field(description='{"sha256": {"0": hex, ...}}')
    event_log: str = Field(description="base64 binary_bios_measurements")
    execution_log: str | None = Field(
        default=None, description="base64 CEL: the execution log from execution_log_from on"
    )
    execution_log_from: int | None = Field(
        default=None, ge=0, description="the record number execution_log starts at"
    )
    release_envelope: str | None = Field(
        default=None,
        max_length=_RELEASE_ENVELOPE_B64,
        description="base64 DSSE envelope of the booted release (at most 64 KiB): a release "
        "the policy does not list is appraised from it when signed by the policy's signers",
    )


class EvidenceResponse(BaseModel):
    result_id: str
    status: str
    ear: str
    not_after: str
    reasons: list[str]
    state: str
    execution_log_next: int | None = Field(
        default=None, description="the execution-log record to send from next time"
    )
    log_index: int = Field(description="the result's entry in the transparency log")
    inclusion_proof: dict[str, Any] = Field(
        description='{"log_index", "tree_size", "entry": b64, "proof": [b64], '
        '"checkpoint": signed note} (docs/verifier-protocol.md, "Transparency log")'
    )


def _decode(body: EvidenceRequest) -> Evidence:
    try:
        pcrs = PcrValues.from_json(body.pcrs)
    except (EvidenceError, ValueError, KeyError, TypeError) as error:
        raise BadRequest(f"pcrs: {error}", code="malformed") from None
    return Evidence(
        nonce=decode_b64(body.nonce, "nonce"),
        quote=decode_b64(body.quote, "quote"),
        signature=decode_b64(body.signature, "signature"),
        pcrs=pcrs,
        event_log=decode_b64(body.event_log, "event_log"),
        release_envelope=_release_envelope(body.release_envelope),
    )


def _release_envelope(value: str | None) -> bytes | None:
    if value is None:
        return None
    envelope = decode_b64(value, "release_envelope")
    if len(envelope) > MAX_RELEASE_ENVELOPE:
        raise PayloadTooLarge(
            f"release_envelope: {len(envelope)} bytes, more than {MAX_RELEASE_ENVELOPE}",
            code="too-large",
        )
    return envelope


@dataclass(frozen=True)
class _NodeRow:
    """What appraisal reads of a node; compared again under the write lock."""

    id: str
    name: str
    ak_public: bytes
    revoked: bool
    state: str
    last_clock: int | None
    last_reset_count: int | None
    last_restart_count: int | None
    last_clock_safe: bool | None

    def appraisal_inputs(self) -> tuple[Any, ...]:
        return (
            self.name,
            self.ak_public,
            self.last_clock,
            self.last_reset_count,
            self.last_restart_count,
            self.last_clock_safe,
        )


_NODE_COLUMNS = (
    Node.id,
    Node.name,
    Node.ak_public,
    Node.revoked,
    Node.state,
    Node.last_clock,
    Node.last_reset_count,
    Node.last_restart_count,
    Node.last_clock_safe,
)


# Built once: the committer runs these for every result, and building and keying a statement
# costs more than executing it.
_READ_NODE = select(*_NODE_COLUMNS).where(Node.id == bindparam("node"))
_LOCK_NODE = _READ_NODE.with_for_update()
_INSERT_RESULT = insert(Result)
_INSERT_EVENT = insert(Event)
_UPDATE_NODE = (
    update(Node)
    .where(Node.id == bindparam("b_node"))
    .values(
        latest_result_id=bindparam("b_result"),
        updated_at=bindparam("b_now"),
        last_clock=bindparam("b_clock"),
        last_reset_count=bindparam("b_reset_count"),
        last_restart_count=bindparam("b_restart_count"),
        last_clock_safe=bindparam("b_clock_safe"),
        trusted_until=bindparam("b_trusted_until"),
        state=bindparam("b_state"),
    )
)
_RECORD_LOG_INDEX = (
    update(Result).where(Result.id == bindparam("b_id")).values(log_index=bindparam("b_index"))
)


def _node_row(connection: Connection, node_id: str, *, lock: bool) -> _NodeRow | None:
    row = connection.execute(_LOCK_NODE if lock else _READ_NODE, {"node": node_id}).first()
    return None if row is None else _NodeRow(*row)


def _last_clock(node: _NodeRow) -> ClockInfo | None:
    if node.last_clock is None or node.last_reset_count is None or node.last_restart_count is None:
        return None
    return ClockInfo(
        node.last_clock, node.last_reset_count, node.last_restart_count, bool(node.last_clock_safe)
    )


@dataclass(frozen=True)
class BootedRelease:
    """The release the quoted boot matched, as the result records it: the signed manifest's
    name, version, security version and digest (sha256 hex); a UKI has its name only."""

    name: str
    version: str | None = None
    security_version: int | None = None
    digest: str | None = None

    @classmethod
    def of_reference(cls, entry: ReferenceEntry) -> BootedRelease:
        return cls(
            entry.release_name,
            entry.release_version,
            entry.security_version,
            entry.manifest_digest.hex(),
        )

    def claim(self) -> dict[str, Any]:
        """The EAR's ``stockade.release``."""
        return {
            "name": self.name,
            "version": self.version,
            "security_version": self.security_version,
            "digest": self.digest,
        }


# A captured-platform appraisal names the release it matched by label ("name version"):
# its manifest's fields, built once per policy version (the references object is the key,
# held so its id is not reused).
_CAPTURED_RELEASES: dict[int, tuple[object, dict[str, BootedRelease]]] = {}
_CAPTURED_RELEASES_KEPT = 8


def _captured_releases(active: ActivePolicy) -> dict[str, BootedRelease]:
    cached = _CAPTURED_RELEASES.get(id(active.references))
    if cached is not None and cached[0] is active.references:
        return cached[1]
    by_label: dict[str, BootedRelease] = {}
    for uki in getattr(active.policy, "ukis", ()):
        by_label.setdefault(uki.name, BootedRelease(uki.name))
    for manifest in getattr(active.policy, "releases", ()):
        by_label[f"{manifest.name} {manifest.version}"] = BootedRelease(
            manifest.name,
            manifest.version,
            manifest.security_version,
            manifest_digest(manifest).hex(),
        )
    if len(_CAPTURED_RELEASES) >= _CAPTURED_RELEASES_KEPT:
        _CAPTURED_RELEASES.clear()
    _CAPTURED_RELEASES[id(active.references)] = (active.references, by_label)
    return by_label


def booted_release(active: ActivePolicy, appraisal: Appraisal) -> BootedRelease | None:
    """What the appraisal matched: the reference entry the PCRs equal, or on a captured
    platform the accepted release or UKI the boot matched event by event; None when the boot
    matched none (the result records no release)."""
    if appraisal.matched_reference is not None:
        return BootedRelease.of_reference(appraisal.matched_reference)
    if appraisal.matched_release is None:
        return None
    return _captured_releases(active).get(appraisal.matched_release)


@dataclass(frozen=True)
class _Prepared:
    """An appraised and signed result, not yet stored."""

    inputs: tuple[Any, ...]
    result_id: str
    status: str
    reasons: list[str]
    clock: ClockInfo | None
    ear: str
    policy_ref: str
    not_after: datetime
    pcrs: dict[str, dict[str, str]] | None  # the attested PCR values, when trusted
    log_entry: bytes  # the result's transparency log entry (canonical JSON)
    executions: ExecutionOutcome | None = None  # when the policy quotes PCR 13
    release: BootedRelease | None = None  # the release the boot matched
    # The evidence kept with the result (``evidence_blobs``): sha256 hex of the event log and
    # of the release envelope (None: none sent).
    event_log_digest: str = ""
    release_envelope_digest: str | None = None


@dataclass(frozen=True)
class _ExecutionInput:
    """The submitted execution log and the state it is appraised from."""

    log: bytes
    log_from: int
    previous: ExecutionState | None

    @property
    def fingerprint(self) -> object:
        return None if self.previous is None else self.previous.to_json()


class _StaleNode(Exception):
    """The node's appraisal inputs changed between the read and the write: appraise again."""


# Lost races on the node's clock before appraisal is done under the write lock (as it once
# always was), so a node hammered by concurrent submissions still makes progress.
_OPTIMISTIC_ATTEMPTS = 3


def _prepare(
    service: Service,
    active: ActivePolicy,
    node: _NodeRow,
    evidence: Evidence,
    now: datetime,
    executions: _ExecutionInput,
) -> _Prepared:
    view = NodeView(
        node.id, node.name, TpmPublic.unmarshal_tpm2b(node.ak_public), _last_clock(node)
    )
    result_id = str(uuid.uuid4())
    not_after = now + timedelta(seconds=float(active.policy.result_validity_seconds))
    started = time.perf_counter()
    appraisal = _appraise(service, active, view, evidence)
    outcome = None
    if active.policy.executions_quoted and appraisal.clock is not None:
        outcome = appraise_node_executions(
            executions.previous,
            appraisal.clock.reset_count,
            appraisal.clock.restart_count,
            evidence.pcrs,
            executions.log,
            executions.log_from,
            active.policy.forbidden,
        )
    final = conclude(appraisal, outcome)
    status, reasons, clock = final.status, list(final.reasons), final.clock
    policy_ref = active.ref
    release = booted_release(active, appraisal)
    claims = ear_claims(
        final,
        view,
        result_id,
        evidence.nonce,
        now,
        not_after,
        service.config.verifier_build,
        SignedEvidence(node.ak_public, evidence.quote),
        release=release.claim() if release is not None else None,
    )
    ear = sign_ear(service.signing_key, claims)
    metrics_of(service).appraised(time.perf_counter() - started)
    attested = None
    selection = active.policy.pcrs
    if (
        status != Status.CONTRAINDICATED
        and clock is not None
        and isinstance(selection, PcrSelection)
    ):
        # The quote verified over exactly the policy's selection: these values are attested.
        attested = evidence.pcrs.restricted_to(selection).to_json()
    envelope = evidence.release_envelope
    return _Prepared(
        executions=outcome,
        release=release,
        event_log_digest=blob_digest(evidence.event_log),
        release_envelope_digest=blob_digest(envelope) if envelope is not None else None,
        pcrs=attested,
        inputs=(*node.appraisal_inputs(), executions.fingerprint),
        result_id=result_id,
        status=status,
        reasons=reasons,
        clock=clock,
        ear=ear,
        policy_ref=policy_ref,
        not_after=not_after,
        log_entry=attestation_result_entry(
            result_id=result_id,
            node_id=node.id,
            node_name=node.name,
            status=str(status),
            policy=policy_ref,
            not_after=rfc3339(not_after),
            issued_at=rfc3339(now),
            ear=ear,
        ),
    )


class _Unverified(Exception):
    """The quote did not verify with the node's AK over its nonce: evidence of nothing."""

    def __init__(self, prepared: _Prepared) -> None:
        super().__init__(prepared.reasons)
        self.prepared = prepared


def _reject_unverified(
    service: Service, node_id: str, evidence: Evidence, prepared: _Prepared, now: datetime
) -> Forbidden:
    """Spend the nonce (so the same challenge cannot be tried again), record a rate-limited
    security event, and nothing else: no result, no state change, no log entry."""
    with service.engine.begin() as connection:
        consume_nonce(connection, node_id, evidence.nonce, now)
    reasons = "; ".join(prepared.reasons) or "the quote does not verify"
    record_security_event(service, "evidence-unverified", reasons, node_id=node_id)
    return Forbidden(
        f"the evidence does not verify ({reasons}); nothing was recorded", code="evidence"
    )


@router.post(
    "/v1/nodes/{node_id}/evidence",
    response_model=EvidenceResponse,
    dependencies=[Depends(require_node_spending_a_nonce)],
)
async def submit_evidence(
    node_id: Annotated[str, Path(max_length=64)], body: EvidenceRequest, request: Request
) -> EvidenceResponse:
    """Evidence the node's AK signed over its nonce is a finding even when it fails appraisal
    (200, contraindicated). A quote that does not verify is not: it is refused (403
    ``evidence``) and changes nothing but a security counter.

    Appraisal and signing run in a worker thread outside any write transaction, against a
    snapshot of the node; the writes then go to the process's one writer
    (``stockade.verifier.committer``), which spends the nonce (the single decision on its
    use), checks the snapshot still holds and stores the result, the node's new state and
    its event with the other results waiting. No thread waits for that batch.
    """
    service = service_of(request)
    evidence = _decode(body)
    log = decode_b64(body.execution_log, "execution_log") if body.execution_log else b""
    execution_log = (log, body.execution_log_from or 0)
    for _attempt in range(_OPTIMISTIC_ATTEMPTS):
        try:
            item = await anyio.to_thread.run_sync(
                _prepared_item, service, node_id, evidence, execution_log
            )
            committed = await service.committer.submit_async(item)
        except _StaleNode:
            continue
        except _Unverified as unverified:
            raise await _rejected(service, node_id, evidence, unverified) from None
        assert committed.receipt is not None  # a result always logs its entry
        metrics_of(service).attested(item.prepared.status)
        response = _response(item.prepared, committed.value, committed.receipt)
        _log_result(node_id, response)
        return response
    # Lost every race on the node: appraised a last time inside its own write transaction.
    try:
        response = await anyio.to_thread.run_sync(
            _submit_locked, service, node_id, evidence, execution_log
        )
    except _Unverified as unverified:
        raise await _rejected(service, node_id, evidence, unverified) from None
    metrics_of(service).attested(response.status)
    _log_result(node_id, response)
    return response


def _log_result(node_id: str, response: EvidenceResponse) -> None:
    """One line per stored result: the node, the result, what it concluded and why."""
    log.info(
        "attestation result",
        extra=fields(
            node=node_id,
            result=response.result_id,
            status=response.status,
            state=response.state,
            log_index=response.log_index,
            reason=response.reasons[0] if response.reasons else None,
        ),
    )


async def _rejected(
    service: Service, node_id: str, evidence: Evidence, unverified: _Unverified
) -> Forbidden:
    return await anyio.to_thread.run_sync(
        _reject_unverified, service, node_id, evidence, unverified.prepared, service.now()
    )


def _prepared_item(
    service: Service, node_id: str, evidence: Evidence, execution_log: tuple[bytes, int]
) -> _StoreResult:
    """Read the node, appraise and sign: the writes for the committer."""
    now = service.issuing_now()
    with service.engine.connect() as connection:
        node = _node_row(connection, node_id, lock=False)
        if node is None:
            raise NotFound(f"no node {node_id}", code="node")
        if node.revoked:
            raise Forbidden(f"node {node_id} is revoked", code="revoked")
        # Fail fast: a spent or unknown nonce is not worth an appraisal (the write still
        # decides).
        if not nonce_usable(connection, node_id, evidence.nonce, now):
            raise Conflict("the nonce is unknown, expired or already used", code="nonce")
        previous = _ExecutionInput(*execution_log, load_state(connection, node_id))
    prepared = _prepare(service, service.active_policy(), node, evidence, now, previous)
    if prepared.clock is None:
        raise _Unverified(prepared)
    return _StoreResult(node_id, evidence, execution_log, prepared, now)


def _submit_locked(
    service: Service, node_id: str, evidence: Evidence, execution_log: tuple[bytes, int]
) -> EvidenceResponse:
    now = service.issuing_now()
    # Before the write: the lookup may need its own connection, and none is held here.
    active = service.active_policy()
    with service.engine.begin() as connection:
        # The nonce goes first: it takes the write lock and is spent even if appraisal fails.
        consume_nonce(connection, node_id, evidence.nonce, now)
        locked = _locked_node(connection, node_id)
        current = _ExecutionInput(*execution_log, load_state(connection, node_id))
        prepared = _prepare(service, active, locked, evidence, now, current)
        if prepared.clock is None:
            raise _Unverified(prepared)  # rolls back; the nonce is spent on its own
        state, entries = _write_result(connection, locked, prepared, evidence, now)
        # The evidence kept after the node's row and before the log's, as the committer's
        # batches write it, so the two never wait on each other in opposite orders.
        for blob in evidence_blobs(prepared, evidence, now):
            blob.write(connection)
        # Last, so the log's state row is held only until this commit: the result (and the
        # executions it proved) are logged if and only if they are stored.
        appended = service.translog.append(connection, *entries)
        _record_log_index(connection, prepared.result_id, appended.size - 1)
    return _response(prepared, state, service.translog.receipt(appended, prepared.log_entry))


@dataclass(frozen=True)
class _StoreResult:
    """An appraised result's writes, for the group committer (``BatchItem``): the nonce is
    spent and the node's snapshot checked under the batch's transaction."""

    node_id: str
    evidence: Evidence
    execution_log: tuple[bytes, int]
    prepared: _Prepared
    now: datetime
    stored: list[str] = field(default_factory=list)  # the node's new state, once claimed

    @property
    def sort_key(self) -> str:
        return self.node_id

    @property
    def shared_rows(self) -> tuple[StoredBlob, ...]:
        """The evidence kept with the result, written by the committer once this item is
        claimed (``GroupCommitter._write``: by digest, once per batch)."""
        return evidence_blobs(self.prepared, self.evidence, self.now)

    def claim(self, connection: Connection) -> list[bytes]:
        locked = _locked_node(connection, self.node_id)
        current = _ExecutionInput(*self.execution_log, load_state(connection, self.node_id))
        if self.prepared.inputs != (*locked.appraisal_inputs(), current.fingerprint):
            raise _StaleNode  # nothing written: the nonce stays unused for the next attempt
        # The first write, and the single decision on the nonce's use (409 writes nothing).
        consume_nonce(connection, self.node_id, self.evidence.nonce, self.now)
        state, entries = _write_result(connection, locked, self.prepared, self.evidence, self.now)
        self.stored[:] = [state]
        return entries

    def logged(self, connection: Connection, index: int | None) -> str:
        if index is not None:
            _record_log_index(connection, self.prepared.result_id, index)
        return self.stored[0]


EVENT_LOG = "event-log"
RELEASE_ENVELOPE = "release-envelope"


@dataclass(frozen=True)
class StoredBlob:
    """Evidence kept content-addressed (``evidence_blobs``): written if absent, so the same
    log sent by every attestation of a boot, or by two replicas at once, is one row. A
    ``shared_rows`` item of the group committer: ``key`` orders the writes of a batch."""

    digest: str  # sha256 of body, hex
    kind: str
    body: bytes
    created_at: datetime

    @property
    def key(self) -> str:
        return self.digest

    def write(self, connection: Connection) -> None:
        """INSERT ... ON CONFLICT DO NOTHING on PostgreSQL and SQLite (a concurrent insert of
        the same digest waits for the other transaction and then does nothing: never an
        error); elsewhere a check, then an insert under a savepoint."""
        row = {
            "digest": self.digest,
            "kind": self.kind,
            "body": self.body,
            "created_at": self.created_at,
        }
        statement = _insert_if_absent(connection.dialect.name)
        if statement is not None:
            connection.execute(statement, row)
            return
        present = select(EvidenceBlob.digest).where(EvidenceBlob.digest == self.digest)
        if connection.execute(present).first() is not None:
            return
        try:
            with connection.begin_nested():
                connection.execute(insert(EvidenceBlob), row)
        except IntegrityError:
            pass  # stored meanwhile by another transaction: the same bytes


_INSERT_IF_ABSENT: dict[str, Insert] = {}


def _insert_if_absent(dialect: str) -> Insert | None:
    """The dialect's INSERT ... ON CONFLICT (digest) DO NOTHING, built once."""
    statement = _INSERT_IF_ABSENT.get(dialect)
    if statement is not None:
        return statement
    made: Insert
    if dialect == "postgresql":
        from sqlalchemy.dialects import postgresql

        made = postgresql.insert(EvidenceBlob).on_conflict_do_nothing(index_elements=["digest"])
    elif dialect == "sqlite":
        from sqlalchemy.dialects import sqlite

        made = sqlite.insert(EvidenceBlob).on_conflict_do_nothing(index_elements=["digest"])
    else:
        return None
    _INSERT_IF_ABSENT[dialect] = made
    return made


def blob_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def evidence_blobs(
    prepared: _Prepared, evidence: Evidence, now: datetime
) -> tuple[StoredBlob, ...]:
    """The event log (always; an empty one too) and the release envelope (when sent), by
    the digests ``_prepare`` took (not hashed again in the writer's thread)."""
    blobs = [StoredBlob(prepared.event_log_digest, EVENT_LOG, evidence.event_log, now)]
    envelope = evidence.release_envelope
    if envelope is not None and prepared.release_envelope_digest is not None:
        blobs.append(StoredBlob(prepared.release_envelope_digest, RELEASE_ENVELOPE, envelope, now))
    return tuple(blobs)


def _locked_node(connection: Connection, node_id: str) -> _NodeRow:
    locked = _node_row(connection, node_id, lock=True)
    if locked is None:
        raise NotFound(f"no node {node_id}", code="node")
    if locked.revoked:
        raise Forbidden(f"node {node_id} is revoked", code="revoked")
    return locked


def _write_result(
    connection: Connection,
    node: _NodeRow,
    prepared: _Prepared,
    evidence: Evidence,
    now: datetime,
) -> tuple[str, list[bytes]]:
    """Store the result, the node's new state, its event and the executions it proved; the
    new state and the log entries (the result's last)."""
    state = _store(connection, node, prepared, now)
    if prepared.executions is not None and prepared.executions.records:
        connection.execute(
            update(Result)
            .where(Result.id == prepared.result_id)
            .values(quote=evidence.quote, quote_signature=evidence.signature)
        )
    entries = (
        store_executions(
            connection, node.id, node.name, prepared.executions, prepared.result_id, now
        )
        if prepared.executions is not None
        else []
    )
    return state, [*entries, prepared.log_entry]


def _record_log_index(connection: Connection, result_id: str, index: int) -> None:
    connection.execute(_RECORD_LOG_INDEX, {"b_id": result_id, "b_index": index})


def _response(prepared: _Prepared, state: str, receipt: Receipt) -> EvidenceResponse:
    return EvidenceResponse(
        result_id=prepared.result_id,
        status=prepared.status,
        ear=prepared.ear,
        not_after=rfc3339(prepared.not_after),
        reasons=prepared.reasons,
        state=state,
        execution_log_next=(
            prepared.executions.next_recnum if prepared.executions is not None else None
        ),
        log_index=receipt.log_index,
        inclusion_proof=receipt.to_json(),
    )


def _store(connection: Connection, node: _NodeRow, prepared: _Prepared, now: datetime) -> str:
    """Insert the result, update the node, record the event on a state change; the new state."""
    release = prepared.release
    connection.execute(
        _INSERT_RESULT,
        {
            "id": prepared.result_id,
            "node_id": node.id,
            "status": prepared.status,
            "ear": prepared.ear,
            "reasons": prepared.reasons,
            "policy_ref": prepared.policy_ref,
            "not_after": prepared.not_after,
            "created_at": now,
            "pcrs": prepared.pcrs,
            "release_name": release.name if release is not None else None,
            "release_version": release.version if release is not None else None,
            "release_security_version": (release.security_version if release is not None else None),
            "release_digest": release.digest if release is not None else None,
            "event_log_digest": prepared.event_log_digest,
            "release_envelope_digest": prepared.release_envelope_digest,
        },
    )
    clock = prepared.clock
    if clock is None:  # only verified quotes are stored: they carry the TPM's clock
        raise AssertionError("a result without a verified quote is never stored")
    if prepared.status == Status.CONTRAINDICATED:
        state, reason, trusted_until = NodeState.FAILED, _reason(prepared.reasons), None
    else:
        state, reason, trusted_until = NodeState.TRUSTED, str(prepared.status), prepared.not_after
    connection.execute(
        _UPDATE_NODE,
        {
            "b_node": node.id,
            "b_result": prepared.result_id,
            "b_now": now,
            "b_clock": clock.clock,
            "b_reset_count": clock.reset_count,
            "b_restart_count": clock.restart_count,
            "b_clock_safe": clock.safe,
            "b_trusted_until": trusted_until,
            "b_state": state,
        },
    )
    if node.state != state:
        connection.execute(
            _INSERT_EVENT,
            {
                "node_id": node.id,
                "name": node.name,
                "from_state": node.state,
                "to_state": state,
                "reason": reason,
                "result_id": prepared.result_id,
                "time": now,
            },
        )
    return str(state)


def _reason(reasons: list[str]) -> str:
    return reasons[0] if reasons else "contraindicated"


def _appraise(
    service: Service, active: ActivePolicy, view: NodeView, evidence: Evidence
) -> Appraisal:
    """The appraiser's finding; whatever goes wrong inside it ends as contraindicated."""
    try:
        return service.require_appraiser().appraise(
            active.policy, active.references, view, evidence, evidence.nonce
        )
    except EvidenceError as error:
        reason = f"evidence: {error}"
    except Exception:
        log.exception("appraisal of node %s raised", view.node_id)
        reason = "internal: appraisal failed; see the verifier log"
    return failed_appraisal(reason, active.ref)
