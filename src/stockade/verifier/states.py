"""Node states and their transitions; the sweeper that makes expired trust ``untrusted``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from enum import StrEnum
from typing import Protocol

import anyio.to_thread
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from stockade.verifier.db import rows_changed
from stockade.verifier.errors import is_database_unavailable
from stockade.verifier.events import record_event
from stockade.verifier.leadership import SWEEPER, Lease
from stockade.verifier.models import ChannelReplay, Enrollment, Event, Node, Nonce
from stockade.verifier.service import Service

log = logging.getLogger(__name__)


class NodeState(StrEnum):
    PENDING = "pending"  # enrolled, waiting for the operator's approval (mode approve)
    ENROLLED = "enrolled"
    TRUSTED = "trusted"
    UNTRUSTED = "untrusted"
    FAILED = "failed"
    REVOKED = "revoked"


class _Trusting(Protocol):
    """A node as an ORM object or a selected row: its stored state and trust deadline."""

    @property
    def state(self) -> str: ...

    @property
    def trusted_until(self) -> datetime | None: ...


def effective_state(node: _Trusting, now: datetime) -> str:
    """The state as of ``now``: trust whose deadline passed reads as untrusted even before
    the sweeper writes it (fail closed)."""
    if node.state == NodeState.TRUSTED and (
        node.trusted_until is None or node.trusted_until <= now
    ):
        return NodeState.UNTRUSTED
    return node.state


def transition(
    session: Session,
    node: Node,
    to: NodeState,
    reason: str,
    now: datetime,
    result_id: str | None = None,
    actor: str | None = None,
) -> None:
    """Move ``node`` to ``to``; an event is stored when the state changes."""
    previous = node.state
    node.state = to
    node.updated_at = now
    if previous != to:
        record_event(session, node, previous, to, reason, now, result_id, actor=actor)


def sweep_stale(service: Service) -> int:
    """Mark trusted nodes whose result expired ``untrusted`` (reason ``stale``); return how many.

    Each node is updated conditionally, so a fresh result racing the sweep wins.
    """
    now = service.now()
    marked = 0
    with service.transaction() as session:
        expired = session.scalars(
            select(Node).where(Node.state == NodeState.TRUSTED, Node.trusted_until <= now)
        ).all()
        for node in expired:
            changed = rows_changed(
                session.execute(
                    update(Node)
                    .where(
                        Node.id == node.id,
                        Node.state == NodeState.TRUSTED,
                        Node.trusted_until <= now,
                    )
                    .values(state=NodeState.UNTRUSTED, updated_at=now)
                    .execution_options(synchronize_session=False)
                )
            )
            if changed == 1:
                record_event(
                    session,
                    node,
                    NodeState.TRUSTED,
                    NodeState.UNTRUSTED,
                    "stale",
                    now,
                    node.latest_result_id,
                )
                marked += 1
        session.execute(delete(Nonce).where(Nonce.expires_at <= now))
        # Challenges never activated, and machines the operator never approved, do not stay.
        session.execute(delete(Enrollment).where(Enrollment.expires_at <= now))
        session.execute(delete(ChannelReplay).where(ChannelReplay.expires_at <= now))
        _sweep_pending(session, now)
    return marked


def _sweep_pending(session: Session, now: datetime) -> None:
    """Delete pending nodes whose approval window passed: they were never trusted, hold no
    results, and their EK may enroll again (and wait again)."""
    expired = session.scalars(
        select(Node.id).where(Node.state == NodeState.PENDING, Node.pending_until <= now)
    ).all()
    if not expired:
        return
    session.execute(delete(Event).where(Event.node_id.in_(expired)))
    session.execute(delete(Nonce).where(Nonce.node_id.in_(expired)))
    session.execute(delete(Node).where(Node.id.in_(expired), Node.state == NodeState.PENDING))


async def run_sweeper(
    service: Service, stop: asyncio.Event | None = None, lease: Lease | None = None
) -> None:
    """Sweep every ``sweep_interval_seconds`` until ``stop`` is set (or cancelled); errors are
    logged, not fatal (a database outage once per burst, through ``service.outage``).

    Replicas sharing the database sweep one at a time: each pass first takes or renews the
    ``stale-sweeper`` lease (``stockade.verifier.leadership``; ``leader_lease_seconds``), and
    only its holder sweeps; another replica takes over when the holder stops renewing. Every
    replica still raises its clock floor from the database. A clean stop releases the lease.

    Stop with ``stop``, not by cancelling: a cancelled task leaves its sweep running in its
    thread, against a database the app is closing (and its lease to run out)."""
    stop = stop or asyncio.Event()
    if lease is None:
        lease = Lease(service.engine, SWEEPER, lease_seconds=service.config.leader_lease_seconds)
    while not stop.is_set():
        try:
            await anyio.to_thread.run_sync(_sweep_once, service, lease)
        except Exception as error:
            if is_database_unavailable(error):
                service.outage.failed(error, "sweeper")
            else:
                log.exception("stale sweep failed; retrying")
        else:
            service.outage.succeeded()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), service.config.sweep_interval_seconds)
    try:
        await anyio.to_thread.run_sync(lease.release)
    except Exception as error:  # the database is gone: the lease runs out on its own
        log.warning("cannot release the sweeper lease: %s", error)


def _sweep_once(service: Service, lease: Lease) -> None:
    was_leader = lease.held
    if lease.acquire():
        if not was_leader:
            log.info("this replica (%s) now runs the stale sweeper", lease.holder)
        sweep_stale(service)
    elif was_leader:
        log.warning("this replica (%s) lost the sweeper lease", lease.holder)
    # Another replica's newer writes raise the floor this one's clock must not be behind.
    service.refresh_clock_floor()
