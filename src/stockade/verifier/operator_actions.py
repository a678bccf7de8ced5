"""Who acted: every operator action is one ``operator_actions`` row and one ``operator-action``
entry of the transparency log, both written in the action's own transaction.

Every operator route calls ``record_action`` last in the transaction that makes its change
(so an action that is refused or rolls back leaves neither row nor entry): it appends the
entry (``TransparencyLog.append``: under the log's state row, proving the stored tree still
extends the newest checkpoint signed, exactly as the group committer's batches do) and
writes the row naming the entry's index. Nothing is signed here: the next checkpoint (a
result's receipt, ``GET /v1/log/checkpoint``, the audit's receipts) covers the entry, and is
proven to extend the one signed before, wherever the entries between came from.

The row and the entry hold the operator credential's name, the action, its subject (a node
id, a policy ``id@version``, a secret's name) and a bounded detail: never a secret value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, insert
from sqlalchemy.orm import Session

from stockade.translog.entries import operator_action_entry
from stockade.verifier.models import OperatorActionRow
from stockade.verifier.service import Service
from stockade.verifier.wire import rfc3339

# The actions an operator route records (``action`` of the row and the entry).
ACTIONS = frozenset(
    {
        "node.revoke",
        "node.allow",
        "node.approve",
        "node.replace",
        "node.labels",
        "policy.store",
        "policy.activate",
        "policy.delete",
        "secret.put",
        "secret.grant",
        "secret.revoke",
        "secret.delete",
        "secret.rekey",
    }
)
MAX_ACTOR = 255
MAX_SUBJECT = 512
MAX_DETAIL = 1000
ELLIPSIS = "..."


@dataclass(frozen=True)
class RecordedAction:
    """What ``record_action`` wrote: the row's id, the entry's log index and bytes."""

    id: int
    log_index: int
    entry: bytes


def bounded(text: str, limit: int) -> str:
    """``text``, cut to at most ``limit`` characters (marked with ``...`` when cut)."""
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS


def action_time(moment: datetime) -> datetime:
    """``moment`` to the millisecond: what the row stores is what the entry says
    (``rfc3339`` writes milliseconds)."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def record_action(
    transaction: Connection | Session,
    service: Service,
    actor: str,
    action: str,
    subject: str,
    detail: str = "",
) -> RecordedAction:
    """Record operator ``actor``'s ``action`` on ``subject`` in the caller's transaction
    (a Connection, or a Session whose pending changes are flushed first, so every row lock
    is taken before the log's): its log entry, then its row. Call last, just before the
    commit: the log's state row stays locked until then. 503 ``log-corrupted`` when the
    stored log does not extend the newest checkpoint signed (the caller's transaction then
    rolls back, the action with it)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown operator action {action!r}")
    if isinstance(transaction, Session):
        transaction.flush()
        connection = transaction.connection()
    else:
        connection = transaction
    now = action_time(service.now())
    actor, subject, detail = (
        bounded(actor, MAX_ACTOR),
        bounded(subject, MAX_SUBJECT),
        bounded(detail, MAX_DETAIL),
    )
    entry = operator_action_entry(
        actor=actor, action=action, subject=subject, time=rfc3339(now), detail=detail
    )
    appended = service.translog.append(connection, entry)
    index = appended.size - 1
    row_id = connection.execute(
        insert(OperatorActionRow)
        .values(
            time=now, actor=actor, action=action, subject=subject, detail=detail, log_index=index
        )
        .returning(OperatorActionRow.id)
    ).scalar_one()
    return RecordedAction(int(row_id), index, entry)
