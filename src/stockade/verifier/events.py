"""Node state transitions as events: stored, and streamed at ``GET /v1/events`` (SSE).

Reading the stream needs a reader or operator credential (or a session cookie). Streams are
bounded: ``max_event_streams_per_client`` at once per credential and address,
``max_event_streams`` in all (429 ``too-many-streams`` beyond), and each ends after
``event_stream_max_seconds``, or when the session cookie it was opened with ends (the client
resumes with ``Last-Event-ID``, and a browser whose session ended signs in again).

Event order is commit order. Event ids are allocated before commit and transactions commit
out of order (PostgreSQL), so a reader that resumed after the highest id it saw would skip an
event whose transaction took a lower id and committed later. Instead each committed event is
given a ``position`` afterwards by ``sequence_events``: one sequencer at a time (a PostgreSQL
advisory transaction lock, which dies with its holder's connection; SQLite has one writer),
positions above every earlier one, in one transaction. Readers and webhooks page by position,
so whatever commits late is placed after the cursor, never below it. Writers never touch a
shared row: results do not serialize on the sequencer. The position is the public event id.

Webhook delivery reads the same table (webhooks.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Header, Query, Request
from sqlalchemy import BigInteger, Engine, bindparam, func, literal, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from stockade.verifier.errors import BadRequest
from stockade.verifier.models import Event, Node
from stockade.verifier.operator_auth import ReaderActor, session_seconds_left
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
SEQUENCE_BATCH = 1000
# pg_try_advisory_xact_lock key of the event sequencer ("STKDSEQ" in ASCII).
SEQUENCER_LOCK = 0x53544B44534551
_in_process = threading.Lock()


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


def sequence_events(engine: Engine, limit: int = SEQUENCE_BATCH) -> int:
    """Give committed events that have no position the next positions, in id order; returns
    how many. Returns 0 at once when another sequencer holds the lock (it does the work)."""
    with _in_process:
        try:
            with engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    locked = connection.execute(
                        text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": SEQUENCER_LOCK}
                    ).scalar()
                    if not locked:
                        return 0
                elif connection.dialect.name == "sqlite":
                    # The write lock before the first read: another process's sequencer
                    # waits, and this one reads what every earlier one wrote.
                    connection.exec_driver_sql("BEGIN IMMEDIATE")
                pending = (
                    connection.execute(
                        select(Event.id)
                        .where(Event.position.is_(None))
                        .order_by(Event.id)
                        .limit(limit)
                    )
                    .scalars()
                    .all()
                )
                if not pending:
                    return 0
                # Read after taking the lock: every earlier sequencer's positions are visible.
                top = connection.execute(select(func.max(Event.position))).scalar() or 0
                placed = connection.execute(
                    update(Event)
                    .where(Event.id == bindparam("event_id"), Event.position.is_(None))
                    .values(position=bindparam("new_position")),
                    [
                        {"event_id": event_id, "new_position": top + offset}
                        for offset, event_id in enumerate(pending, 1)
                    ],
                ).rowcount
                if placed != len(pending):
                    raise _Raced  # an event went (deleted) or was placed meanwhile: roll back
                return len(pending)
        except (_Raced, IntegrityError, OperationalError):
            # Another sequencer won, or the database is busy: the next pass places what is left.
            return 0


class _Raced(Exception):
    pass


def event_json(event: Event) -> dict[str, Any]:
    return {
        "id": event.position,
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
    sequence_events(service.engine)
    with service.sessions() as session:
        return [event_json(row) for row in events_page(session, after, limit)]


def events_page(session: Session, after: int, limit: int) -> list[Event]:
    """Sequenced events after position ``after``, in stream order."""
    return list(
        session.scalars(
            select(Event)
            .where(Event.position > literal(after, BigInteger))
            .order_by(Event.position)
            .limit(limit)
        )
    )


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
    lifetime = float(service.config.event_stream_max_seconds)
    # A browser's stream ends with its session: the cookie was checked once, at the start.
    left = session_seconds_left(request)
    if left is not None:
        lifetime = min(lifetime, left)
    deadline = time.monotonic() + lifetime

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

    return _SlotStream(generate(), release, lifetime)
