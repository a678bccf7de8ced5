"""Security events: what proved nothing is recorded, rate-limited, and changes nothing else.

A refused channel signature, evidence whose quote does not verify, an enrollment under a name
another EK holds: each is one row in ``security_events`` (``GET /v1/security-events``), in its
own transaction, never in the node's history, results or transparency log. A flood cannot
grow the table faster than ``PER_KEY_PER_MINUTE`` rows per (kind, subject) and
``TOTAL_PER_MINUTE`` rows in all per verifier process; occurrences beyond are counted and the
count is folded into the next row stored for that key.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import BigInteger, insert, literal, select

from stockade.logs import fields
from stockade.verifier.models import SecurityEvent
from stockade.verifier.operator_auth import require_reader
from stockade.verifier.service import Service, service_of
from stockade.verifier.wire import rfc3339

log = logging.getLogger(__name__)
router = APIRouter(tags=["operator"])

PER_KEY_PER_MINUTE = 6
TOTAL_PER_MINUTE = 600
MAX_KEYS = 10_000
MAX_DETAIL = 1000


@dataclass
class _Window:
    started: float = 0.0
    stored: int = 0
    total_stored: int = 0
    per_key: dict[tuple[str, str], int] = field(default_factory=dict)
    suppressed: dict[tuple[str, str], int] = field(default_factory=dict)


class SecurityEventLimiter:
    """Per-minute budgets; ``admit`` answers how many occurrences a stored row stands for
    (0: do not store this one, it was counted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._window = _Window()

    def admit(self, key: tuple[str, str], now: float) -> int:
        with self._lock:
            window = self._window
            if now - window.started >= 60.0:
                carried = {k: v for k, v in window.suppressed.items() if v}
                window = self._window = _Window(started=now)
                # Counts suppressed last minute are not lost: the key's next row carries them.
                window.suppressed = dict(list(carried.items())[:MAX_KEYS])
            used = window.per_key.get(key, 0)
            if (
                used >= PER_KEY_PER_MINUTE
                or window.total_stored >= TOTAL_PER_MINUTE
                or (used == 0 and len(window.per_key) >= MAX_KEYS)
            ):
                if key in window.suppressed or len(window.suppressed) < MAX_KEYS:
                    window.suppressed[key] = window.suppressed.get(key, 0) + 1
                return 0
            window.per_key[key] = used + 1
            window.total_stored += 1
            return 1 + window.suppressed.pop(key, 0)


def record_security_event(
    service: Service,
    kind: str,
    detail: str,
    *,
    node_id: str | None = None,
    name: str | None = None,
    source: str | None = None,
) -> None:
    """Store one security event unless this (kind, subject) is over its budget. Never raises:
    failing to record must not turn a refusal into a 500."""
    subject = node_id or name or source or "-"
    count = service.security_limiter.admit((kind, subject), service.monotonic())
    if count == 0:
        return
    log.warning(
        "security event",
        extra=fields(
            kind=kind, node=node_id, name=name, source=source, detail=detail[:200], count=count
        ),
    )
    try:
        with service.engine.begin() as connection:
            connection.execute(
                insert(SecurityEvent).values(
                    time=service.now(),
                    kind=kind[:32],
                    node_id=None if node_id is None else node_id[:64],
                    name=None if name is None else name[:255],
                    source=None if source is None else source[:64],
                    detail=detail[:MAX_DETAIL],
                    count=count,
                )
            )
    except Exception:
        log.exception("could not record security event %s for %s", kind, subject)


def security_event_json(event: SecurityEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "time": rfc3339(event.time),
        "kind": event.kind,
        "node_id": event.node_id,
        "name": event.name,
        "source": event.source,
        "detail": event.detail,
        "count": event.count,
    }


@router.get("/v1/security-events", dependencies=[Depends(require_reader)])
def list_security_events(
    request: Request,
    after: Annotated[int, Query(ge=0, lt=2**63)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, list[dict[str, Any]]]:
    """Oldest first after id ``after``."""
    service = service_of(request)
    with service.sessions() as session:
        rows = session.scalars(
            select(SecurityEvent)
            .where(SecurityEvent.id > literal(after, BigInteger))
            .order_by(SecurityEvent.id)
            .limit(limit)
        ).all()
        return {"security_events": [security_event_json(row) for row in rows]}
