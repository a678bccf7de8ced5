"""Node state transitions as events: stored, and streamed at ``GET /v1/events`` (SSE).

Reading the stream needs a reader or operator credential (or a session cookie). Streams are
bounded: ``max_event_streams_per_client`` at once per credential and address,
``max_event_streams`` in all (429 ``too-many-streams`` beyond), and each ends after
``event_stream_max_seconds`` (the client resumes with ``Last-Event-ID``).

Webhook delivery reads the same table (another module's job).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request
from sqlalchemy import BigInteger, literal, select
from sqlalchemy.orm import Session
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from stockade.verifier.errors import BadRequest
from stockade.verifier.models import Event, Node
from stockade.verifier.operator_auth import ReaderActor
from stockade.verifier.rate_limit import (
    ConcurrencySlots,
    SlotsExhausted,
    TooManyRequests,
    client_address,
)
from stockade.verifier.service import Service, service_of
from stockade.verifier.wire import rfc3339

router = APIRouter(tags=["events"])

POLL_SECONDS = 0.25
KEEPALIVE_SECONDS = 15.0
BATCH = 500
HARD_STOP_SECONDS = 30.0
MAX_CURSOR = 2**63 - 1  # event ids are 64-bit signed integers in every database
_DIGITS = re.compile(r"^[0-9]{1,19}$")


def record_event(
    session: Session,
    node: Node,
    from_state: str | None,
    to_state: str,
    reason: str,
    now: datetime,
    result_id: str | None = None,
    actor: str | None = None,
) -> Event:
    """Store one transition; ``actor`` names the operator credential that caused it (None: the
    node's own evidence or the verifier itself)."""
    event = Event(
        node_id=node.id,
        name=node.name,
        from_state=from_state,
        to_state=to_state,
        reason=reason,
        result_id=result_id,
        time=now,
        actor=actor,
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
        "actor": event.actor,
    }


def events_after(service: Service, after: int, limit: int = BATCH) -> list[dict[str, Any]]:
    with service.sessions() as session:
        rows = session.scalars(
            select(Event)
            .where(Event.id > literal(after, BigInteger))
            .order_by(Event.id)
            .limit(limit)
        ).all()
        return [event_json(row) for row in rows]


def parse_cursor(text: str, where: str) -> int:
    """An event id to resume after: decimal digits, below 2**63; else 400 ``cursor``."""
    value = text.strip()
    if not _DIGITS.match(value) or int(value) > MAX_CURSOR:
        raise BadRequest(
            f"{where}: {text[:40]!r} is not an event id (a decimal integer from 0 to 2**63-1)",
            code="cursor",
        )
    return int(value)


def _cursor(header: str | None, query: str | None) -> int:
    if query is not None:
        return parse_cursor(query, "after")
    if header is None or not header.strip():
        return 0
    return parse_cursor(header, "Last-Event-ID")


class _SlotStream(StreamingResponse):
    """A streaming response that gives its stream slot back however it ends (finished,
    timed out, client gone, cancelled), and is cut off ``HARD_STOP_SECONDS`` after its
    lifetime even when a client that stopped reading holds it in a blocked write."""

    def __init__(
        self, content: AsyncIterator[str], release: Callable[[], None], lifetime: float
    ) -> None:
        super().__init__(
            content,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self._release = release
        self._lifetime = lifetime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with anyio.move_on_after(self._lifetime + HARD_STOP_SECONDS):
                await super().__call__(scope, receive, send)
        finally:
            self._release()


@router.get("/v1/events", response_class=StreamingResponse)
async def stream_events(
    request: Request,
    actor: ReaderActor,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    after: Annotated[str | None, Query(description="resume after this event id")] = None,
    follow: Annotated[bool, Query(description="keep streaming new events")] = True,
) -> StreamingResponse:
    """Server-Sent Events, one per transition, ``id:`` = event id; resume with
    ``Last-Event-ID``. ``follow=false`` sends what is stored and ends. A stream ends after
    ``event_stream_max_seconds``; streams per client and in all are limited (429
    ``too-many-streams``)."""
    service = service_of(request)
    cursor = _cursor(last_event_id, after)
    slots: ConcurrencySlots = request.app.state.event_streams
    try:
        release = slots.acquire(f"{actor.name}@{client_address(request)}")
    except SlotsExhausted as error:
        whose = "this client's" if error.scope == "client" else "the verifier's"
        raise TooManyRequests(
            f"{whose} limit of {error.limit} concurrent event streams is reached",
            retry_after=POLL_SECONDS * 4,
            code="too-many-streams",
        ) from None
    deadline = time.monotonic() + service.config.event_stream_max_seconds

    async def generate() -> AsyncIterator[str]:
        nonlocal cursor
        idle = 0.0
        yield "retry: 1000\n\n"
        while True:
            if time.monotonic() >= deadline:
                return  # the client reconnects with Last-Event-ID
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

    return _SlotStream(generate(), release, service.config.event_stream_max_seconds)
