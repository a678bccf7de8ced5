"""Leader leases: a job that must run on one replica at a time, with failover.

Replicas sharing a database elect the runner of a job (the stale sweeper: ``states.py``
``run_sweeper``) through one row of the ``leases`` table (migration 0011): the job's ``name``,
the ``holder`` (a replica id), ``lease_until`` (milliseconds on the DATABASE clock, so replicas
whose clocks differ agree on when a lease ends) and ``term``, incremented at every change of
holder (a fencing token).

``Lease.acquire`` takes the row when it is free, released or expired, or renews it when this
replica holds it, in one conditional UPDATE: two replicas racing for an expired lease cannot
both win, since the second UPDATE's condition no longer holds once the first committed (row
lock on PostgreSQL, the single writer on SQLite). The holder renews at every run of the job,
well within the lease; a holder that dies (kill -9, a lost node) stops renewing and another
replica takes over ``lease_seconds`` later; a clean stop ``release``\\ s at once.

A lease is not a lock on the data: the job must stay correct if two replicas ever run it at
once (a holder paused past its lease, as a garbage-collection pause or a frozen VM can). The
sweeper's updates are conditional for that reason. What the lease buys is one sweeper, not N
sweeping the same rows and racing each other on every tick.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    MetaData,
    String,
    Table,
    case,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from stockade.verifier.db import rows_changed
from stockade.verifier.errors import ConfigurationError
from stockade.verifier.webhooks import database_now_ms

HOLDER_LENGTH = 64

_metadata = MetaData()
leases = Table(
    "leases",
    _metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(HOLDER_LENGTH), nullable=True),
    Column("lease_until", BigInteger, nullable=True),  # ms since the epoch, database clock
    Column("term", BigInteger, nullable=False),
)

SWEEPER = "stale-sweeper"


def replica_id() -> str:
    """An id for this process among the replicas: host, pid and a random part (the pid lets
    an operator, and the tests, tell which process holds a lease)."""
    suffix = f"-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    host = socket.gethostname()[: HOLDER_LENGTH - len(suffix)]
    return host + suffix


@dataclass(frozen=True)
class Holding:
    """The lease row as last read: who holds it, until when (database ms), its term."""

    holder: str | None
    lease_until: int | None
    term: int


@dataclass
class Lease:
    """The lease ``name`` as seen by the replica ``holder``.

    ``now_ms`` reads the database clock (tests inject theirs); ``monotonic`` bounds how long
    this replica believes it holds the lease after its last successful renewal, whatever the
    database says later (``held``)."""

    engine: Engine
    name: str
    holder: str = field(default_factory=replica_id)
    lease_seconds: float = 10.0
    now_ms: Callable[[Connection], int] = database_now_ms
    monotonic: Callable[[], float] = time.monotonic
    _renewed_at: float | None = field(default=None, init=False, repr=False)
    _row_exists: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.lease_seconds > 0:
            raise ConfigurationError(f"the {self.name} lease must last a positive time")
        if not 0 < len(self.holder) <= HOLDER_LENGTH:
            raise ConfigurationError(f"a lease holder id has 1 to {HOLDER_LENGTH} characters")

    @property
    def _lease_ms(self) -> int:
        return max(1, int(self.lease_seconds * 1000))

    def acquire(self) -> bool:
        """Take the lease if it is free, released or expired, or renew it if this replica
        holds it; True when this replica holds it now. A database error propagates, and the
        lease then counts as not held (fail closed: no job runs on a lease it may have lost).
        """
        self._renewed_at = None
        started = self.monotonic()
        self._ensure_row()
        with self.engine.begin() as connection:
            now = self.now_ms(connection)
            taken = rows_changed(
                connection.execute(
                    update(leases)
                    .where(
                        leases.c.name == self.name,
                        or_(
                            leases.c.holder.is_(None),
                            leases.c.holder == self.holder,
                            leases.c.lease_until.is_(None),
                            leases.c.lease_until <= now,
                        ),
                    )
                    .values(
                        holder=self.holder,
                        lease_until=now + self._lease_ms,
                        term=case(
                            (leases.c.holder == self.holder, leases.c.term),
                            else_=leases.c.term + 1,
                        ),
                    )
                )
            )
        if taken == 1:
            self._renewed_at = started
        else:
            self._row_exists = False  # held elsewhere, or the row went (a restore): look again
        return taken == 1

    @property
    def held(self) -> bool:
        """Whether this replica may act as the holder now: the last ``acquire`` succeeded and
        less than ``lease_seconds`` passed since it began (by this process's monotonic clock,
        which a wall-clock step does not move)."""
        return (
            self._renewed_at is not None
            and self.monotonic() - self._renewed_at < self.lease_seconds
        )

    def release(self) -> None:
        """Give the lease up now (a clean stop: no replica waits out the lease). Only this
        replica's own holding is released."""
        self._renewed_at = None
        with self.engine.begin() as connection:
            connection.execute(
                update(leases)
                .where(leases.c.name == self.name, leases.c.holder == self.holder)
                .values(holder=None, lease_until=None)
            )

    def read(self) -> Holding | None:
        """The row as stored (None before anyone asked for the lease)."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(leases.c.holder, leases.c.lease_until, leases.c.term).where(
                    leases.c.name == self.name
                )
            ).first()
        return None if row is None else Holding(row.holder, row.lease_until, int(row.term))

    def _ensure_row(self) -> None:
        if self._row_exists:
            return
        with self.engine.connect() as connection:
            exists = connection.execute(
                select(leases.c.name).where(leases.c.name == self.name)
            ).first()
        if exists is None:
            try:
                with self.engine.begin() as connection:
                    connection.execute(
                        leases.insert().values(
                            name=self.name, holder=None, lease_until=None, term=0
                        )
                    )
            except IntegrityError:
                pass  # another replica made it
        self._row_exists = True
