"""``GET /v1/operator-actions``: every recorded operator action (``operator_actions``) with
its transparency-log receipt, for ``stockade audit actions`` (a reader credential)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from sqlalchemy import select

from stockade.verifier.log_api import MAX_INDEX, receipts_at_head
from stockade.verifier.models import OperatorActionRow
from stockade.verifier.nodes import parse_moment
from stockade.verifier.operator_auth import ReaderActor
from stockade.verifier.service import service_of
from stockade.verifier.wire import rfc3339

router = APIRouter(tags=["operator"])

MAX_ACTIONS_PAGE = 1000


def action_json(row: OperatorActionRow, receipts: dict[int, dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": row.id,
        "time": rfc3339(row.time),
        "actor": row.actor,
        "action": row.action,
        "subject": row.subject,
        "detail": row.detail,
        "log_index": row.log_index,
        "inclusion_proof": receipts.get(row.log_index),
    }


@router.get("/v1/operator-actions")
def list_operator_actions(
    request: Request,
    _actor: ReaderActor,
    since: Annotated[str | None, Query(max_length=64, description="RFC 3339, inclusive")] = None,
    until: Annotated[str | None, Query(max_length=64, description="RFC 3339, exclusive")] = None,
    actor: Annotated[str | None, Query(max_length=255, description="operator name")] = None,
    action: Annotated[str | None, Query(max_length=32, description="e.g. node.revoke")] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_INDEX, description="the previous page's next")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_ACTIONS_PAGE)] = 100,
) -> dict[str, Any]:
    """Every operator action in ``[since, until)`` (of ``actor``, of ``action``), oldest
    first, each with its receipt against one signed checkpoint. The cursor is the action's
    log index (``after``: the previous page's ``next``; None when this page is the last):
    an action's entry is appended in its transaction under the log's write lock, so actions
    commit in log order and one that commits while an auditor pages lands after the cursor.
    Row ids are allocated before commit, and would not be."""
    service = service_of(request)
    start, stop = parse_moment(since, "since"), parse_moment(until, "until")
    query = select(OperatorActionRow).order_by(OperatorActionRow.log_index).limit(limit)
    if after is not None:
        query = query.where(OperatorActionRow.log_index > after)
    if start is not None:
        query = query.where(OperatorActionRow.time >= start)
    if stop is not None:
        query = query.where(OperatorActionRow.time < stop)
    if actor:
        query = query.where(OperatorActionRow.actor == actor)
    if action:
        query = query.where(OperatorActionRow.action == action)
    with service.sessions() as session:
        rows = session.scalars(query).all()
        # After the rows: every index they carry is inside the head the receipts prove.
        receipts = receipts_at_head(service.translog, (row.log_index for row in rows))
        actions = [action_json(row, receipts) for row in rows]
    return {
        "since": since,
        "until": until,
        "actor": actor,
        "action": action,
        "actions": actions,
        "next": actions[-1]["log_index"] if len(rows) == limit else None,
    }
