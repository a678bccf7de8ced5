"""Container executions at the verifier: the new part of a node's execution log, appraised
with each attestation against the quoted PCR 13 (``stockade.appraisal.executions``), stored
with the result whose quote proved it, logged in the transparency log, and audited.

The agent sends the log from the first record the verifier has not acknowledged
(``execution_log_from``); the answer says where to continue (``execution_log_next``). Records
the verifier already holds are skipped; a gap is a finding.

A torn tail (the node's log ends inside a record: a crash or a full disk mid-append) arrives
as raw bytes after the last complete record, the log then sent from record 0 so that offsets
are the file's; the result is contraindicated with a reason naming the record and the byte
offset, and the node sets the tail aside once told. A record that never started (abandoned,
or pending without its extend in the quote) is stored as ``<kind>-not-started``, in its
abandoned form; a pending record the quote shows extended is stored in its done form: the
stored boot log is the node's once every status is final, and replays as such.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import Connection, bindparam, insert, select, update

from stockade.appraisal.executions import ExecutionState
from stockade.appraisal.node_executions import ExecutionOutcome
from stockade.evidence.errors import EvidenceError
from stockade.evidence.execution import (
    ContainerStart,
)
from stockade.translog.entries import execution_record_entry
from stockade.verifier.errors import BadRequest
from stockade.verifier.models import Execution, ExecutionStateRow, Node, Result
from stockade.verifier.operator_auth import ReaderActor
from stockade.verifier.service import service_of
from stockade.verifier.wire import rfc3339

router = APIRouter(tags=["executions"])


_READ_STATE = select(ExecutionStateRow.state).where(ExecutionStateRow.node_id == bindparam("node"))


def load_state(connection: Connection, node_id: str) -> ExecutionState | None:
    row = connection.execute(_READ_STATE, {"node": node_id}).first()
    if row is None:
        return None
    try:
        return ExecutionState.from_json(row.state)
    except EvidenceError:
        return None  # unreadable: appraise from the start of the boot again (fail closed)


def store_executions(
    connection: Connection,
    node_id: str,
    node_name: str,
    outcome: ExecutionOutcome,
    result_id: str,
    now: datetime,
) -> list[bytes]:
    """Keep the new state and records; the transparency log entries to append."""
    if outcome.state is None:
        return []
    document = outcome.state.to_json()
    changed = connection.execute(
        update(ExecutionStateRow)
        .where(ExecutionStateRow.node_id == node_id)
        .values(state=document, updated_at=now)
    ).rowcount
    if changed != 1:
        connection.execute(
            insert(ExecutionStateRow).values(node_id=node_id, state=document, updated_at=now)
        )
    entries = []
    reset_count, restart_count = outcome.boot
    not_started = frozenset(outcome.not_started)
    for recnum, record, cel in outcome.records:
        start = record if isinstance(record, ContainerStart) else None
        kind = "container-start" if start is not None else "trust-policy-loaded"
        if recnum in not_started:
            kind += "-not-started"
        connection.execute(
            insert(Execution).values(
                node_id=node_id,
                reset_count=reset_count,
                restart_count=restart_count,
                recnum=recnum,
                kind=kind,
                container_id=start.container_id if start else None,
                image_reference=start.image_reference if start else None,
                manifest_digest=start.manifest_digest if start else None,
                record=record.to_json(),
                cel=cel,
                result_id=result_id,
                created_at=now,
            )
        )
        entries.append(
            execution_record_entry(
                node_id=node_id,
                node_name=node_name,
                reset_count=reset_count,
                restart_count=restart_count,
                recnum=recnum,
                kind=kind,
                cel_record=cel,
                result_id=result_id,
            )
        )
    return entries


def _since(text: str) -> datetime:
    """An RFC 3339 time with a zone, as UTC; else 400 ``since`` (never an overflow later)."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"since: {text!r} is not an RFC 3339 time", code="since") from None
    if moment.tzinfo is None:
        raise BadRequest("since: give a time zone (e.g. Z)", code="since")
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError):
        raise BadRequest(f"since: {text!r} is out of range", code="since") from None


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


@router.get("/v1/executions")
def list_executions(
    request: Request,
    _actor: ReaderActor,
    node: Annotated[str | None, Query(max_length=255, description="node id or name")] = None,
    since: Annotated[
        str | None, Query(max_length=64, description="RFC 3339: recorded at or after")
    ] = None,
    image: Annotated[
        str | None, Query(max_length=512, description="image reference or manifest digest")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
) -> dict[str, Any]:
    """What ran where: each execution with the quote that proved it (the result's TPMS_ATTEST,
    signature and PCR values, and the node's AK), and the boot's records up to it, so an
    auditor can check the signature and replay PCR 13 without trusting this service.
    Container command lines are sensitive: a reader or operator credential is required."""
    service = service_of(request)
    query = (
        select(Execution, Node.name, Node.ak_public, Result.quote, Result.quote_signature,
               Result.pcrs, Result.created_at, Result.ear)
        .join(Node, Node.id == Execution.node_id)
        .join(Result, Result.id == Execution.result_id)
        .order_by(Execution.created_at, Execution.node_id, Execution.recnum)
        .limit(limit)
    )  # fmt: skip
    if node:
        query = query.where((Node.id == node) | (Node.name == node))
    if since:
        query = query.where(Execution.created_at >= _since(since))
    # Records that never started are kept for the boot's replay, not listed as executions.
    query = query.where(Execution.kind.not_like("%-not-started"))
    if image:
        query = query.where(
            (Execution.image_reference == image)
            | (Execution.manifest_digest == image)
            | Execution.image_reference.startswith(image.rstrip("/") + ":")
        )
    with service.sessions() as connection:
        rows = connection.execute(query).all()
        boots: dict[tuple[str, int, int], list[tuple[int, bytes, str]]] = {}
        for row in rows:
            key = (row.Execution.node_id, row.Execution.reset_count, row.Execution.restart_count)
            if key not in boots:
                boots[key] = [
                    (recnum, cel, result_id)
                    for recnum, cel, result_id in connection.execute(
                        select(Execution.recnum, Execution.cel, Execution.result_id)
                        .where(
                            Execution.node_id == key[0],
                            Execution.reset_count == key[1],
                            Execution.restart_count == key[2],
                        )
                        .order_by(Execution.recnum)
                    )
                ]
    executions = []
    for row in rows:
        execution: Execution = row.Execution
        key = (execution.node_id, execution.reset_count, execution.restart_count)
        # The proving quote covers the boot's records up to the last one its result stored.
        proved_through = max(
            recnum for recnum, _, result_id in boots[key] if result_id == execution.result_id
        )
        log = b"".join(cel for recnum, cel, _ in boots[key] if recnum <= proved_through)
        executions.append(
            {
                "node_id": execution.node_id,
                "node_name": row.name,
                "boot": {
                    "reset_count": execution.reset_count,
                    "restart_count": execution.restart_count,
                },
                "recnum": execution.recnum,
                "kind": execution.kind,
                "record": execution.record,
                "recorded_at": rfc3339(execution.created_at),
                "proof": {
                    "result_id": execution.result_id,
                    "quoted_at": rfc3339(row.created_at),
                    "quote": _b64(row.quote),
                    "signature": _b64(row.quote_signature),
                    "pcrs": row.pcrs,
                    "ak_public": _b64(row.ak_public),
                    "execution_log": _b64(log),
                    "ear": row.ear,
                },
            }
        )
    return {"executions": executions}
