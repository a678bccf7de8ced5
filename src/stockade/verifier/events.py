"""Node state transitions as events: stored, and streamed at ``GET /v1/events`` (SSE).

Webhook delivery reads the same table (another module's job).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import StreamingResponse

from stockade.verifier.errors import BadRequest
from stockade.verifier.models import Event, Node
from stockade.verifier.service import Service, service_of
from stockade.verifier.wire import rfc3339

router = APIRouter(tags=["events"])

POLL_SECONDS = 0.25
KEEPALIVE_SECONDS = 15.0
BATCH = 500


def record_event(
    session: Session,
    node: Node,
    from_state: str | None,
    to_state: str,
    reason: str,
    now: datetime,
    result_id: str | None = None,
) -> Event:
    event = Event(
        node_id=node.id,
        name=node.name,
        from_state=from_state,
        to_state=to_state,
        reason=reason,
        result_id=result_id,
        time=now,
    )
    session.add(event)
    return event


def event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.id,
        "time": rfc3339(event.time),
        "node_id": event.node_id,
        "name": event.name,
        "from": event.from_state,
        "to": event.to_state,
        "reason": event.reason,
        "result_id": event.result_id,
    }


def events_after(service: Service, after: int, limit: int = BATCH) -> list[dict[str, Any]]:
    with service.sessions() as session:
        rows = session.scalars(
            select(Event).where(Event.id > after).order_by(Event.id).limit(limit)
        ).all()
        return [event_json(row) for row in rows]


def _cursor(header: str | None, query: int | None) -> int:
    if query is not None:
        return query
    if header is None or not header.strip():
        return 0
    try:
        value = int(header.strip())
    except ValueError:
        raise BadRequest("Last-Event-ID: not an event id", code="last-event-id") from None
    if value < 0:
        raise BadRequest("Last-Event-ID: not an event id", code="last-event-id")
    return value


@router.get("/v1/events", response_class=StreamingResponse)
async def stream_events(
    request: Request,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[int | None, Query(ge=0, description="resume after this event id")] = None,
    follow: Annotated[bool, Query(description="keep streaming new events")] = True,
) -> StreamingResponse:
    """Server-Sent Events, one per transition, ``id:`` = event id; resume with
    ``Last-Event-ID``. ``follow=false`` sends what is stored and ends."""
    service = service_of(request)
    cursor = _cursor(last_event_id, after)

    async def generate() -> AsyncIterator[str]:
        nonlocal cursor
        idle = 0.0
        yield "retry: 1000\n\n"
        while True:
            batch = await anyio.to_thread.run_sync(events_after, service, cursor)
            for event in batch:
                cursor = event["id"]
                yield f"id: {cursor}\nevent: transition\ndata: {json.dumps(event)}\n\n"
            if len(batch) == BATCH:
                continue
            if not follow or await request.is_disconnected():
                return
            await asyncio.sleep(POLL_SECONDS)
            idle = 0.0 if batch else idle + POLL_SECONDS
            if idle >= KEEPALIVE_SECONDS:
                idle = 0.0
                yield ": keepalive\n\n"

    return StreamingResponse(
        generate(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
