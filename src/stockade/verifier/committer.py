"""Group commit: results appraised in many request threads are stored together.

A request appraises and signs its result outside any transaction, then hands the writes to
the ``GroupCommitter`` and waits. One thread takes every write waiting and stores them in one
transaction: each item's checks and rows under its own savepoint (a lost race on the nonce or
the node drops that item alone), then one append of all their transparency-log entries, then
one commit. One checkpoint is signed and, on SQLite, the WAL is fsync'd once for the whole
batch (``TransparencyLog.receipts``); only then does any request get its receipt.

Atomicity is that of one attestation before: a result is stored if and only if its entry is
logged, since both are in the batch's transaction. Rows an item shares with others by content
(``shared_rows``: the evidence blobs, one per distinct event log) are written once per batch,
after the claims and in key order, so two replicas' batches inserting the same rows take
them in one order too. When the log refuses to append (the
database is not what this verifier signed) the whole batch rolls back and every request in it
gets the same 503. Items are claimed in node order, so two replicas' batches lock node rows in
the same order and cannot deadlock on them.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import anyio.to_thread
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from stockade.translog.receipt import Receipt
from stockade.translog.store import lock_state_row
from stockade.verifier.errors import Unavailable
from stockade.verifier.metrics import metrics_of

log = logging.getLogger(__name__)

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

MAX_BATCH = 256
WAIT_SECONDS = 120.0
# A batch that fails on the database as a whole (PostgreSQL's deadlock detector picked it, a
# serialization failure) is tried again this many times before its requests get the error.
BATCH_RETRIES = 2


class BatchItem(Protocol[T_co]):
    """One request's writes."""

    @property
    def sort_key(self) -> str:
        """Items are claimed in this order (the node id: row locks in one order)."""
        ...

    def claim(self, connection: Connection) -> Sequence[bytes]:
        """Check, then write this item's rows; its log entries (the receipt is the last's;
        none for an item that only writes rows, e.g. a nonce issued).
        Raising drops this item alone and its caller gets the error, so a claim raises only
        before its first write (or from a write that changed nothing, like a conditional
        UPDATE that matched no row)."""
        ...

    # Optional: ``shared_rows``, rows other items may share by content (objects with ``key``
    # and ``write(connection)``, an insert-if-absent); written after the claims, each key once.

    def logged(self, connection: Connection, index: int | None) -> T_co:
        """After the append, in the same transaction: record the receipt entry's ``index``
        (None when the item logged nothing); what the caller gets back."""
        ...


@dataclass(frozen=True)
class Committed(Generic[T]):
    value: T
    receipt: Receipt | None  # None for an item that logged nothing


class CommitterStopped(Unavailable):
    code = "stopping"


@dataclass
class _Job:
    item: BatchItem[Any]
    future: Future[Committed[Any]] = field(default_factory=Future)


@dataclass(frozen=True)
class _Stored:
    job: _Job
    value: Any
    entry: bytes | None  # the receipt's entry; None: the item logged nothing
    index: int | None


class GroupCommitter:
    """The one writer of appraised results in this process (``start``/``stop``)."""

    def __init__(self, engine: Engine, translog: Any, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.translog = translog  # stockade.verifier.transparency.TransparencyLog
        self.max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stopped = False
        self.batches = 0  # counters, for tests and benchmarks
        self.items = 0

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._stopped = False
                self._thread = threading.Thread(
                    target=self._run, name="stockade-committer", daemon=True
                )
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            self._stopped = True
        if thread is not None:
            self._jobs.put(None)
            thread.join(timeout)

    async def submit_async(self, item: BatchItem[T]) -> Committed[T]:
        """Store ``item`` in the next batch; returns once it is committed and logged, and
        raises what its ``claim`` raised, or what failed the whole batch. No thread waits
        while the batch is written; a caller cancelled (its client went away) before the
        batch took its item stores nothing. Not started (a tool, a test without the
        lifespan), the item is committed alone in a worker thread."""
        job = _Job(item)
        with self._lock:
            running = not self._stopped and self._thread is not None
            if running:
                self._jobs.put(job)
        if not running:
            await anyio.to_thread.run_sync(self._commit, [job])
            return job.future.result(0)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(job.future), WAIT_SECONDS)
        except TimeoutError:
            raise Unavailable(
                f"the result was not committed within {WAIT_SECONDS:.0f} s", code="database"
            ) from None

    def _run(self) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                self._fail_waiting()
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._commit(batch)
                    self._fail_waiting()
                    return
                batch.append(job)
            self._commit(batch)

    def _fail_waiting(self) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.future.set_exception(CommitterStopped("the verifier is stopping"))

    def _commit(self, jobs: list[_Job]) -> None:
        # A job whose caller gave up before now is dropped; the others can no longer be.
        batch = [job for job in jobs if job.future.set_running_or_notify_cancel()]
        if not batch:
            return
        batch.sort(key=lambda job: job.item.sort_key)
        for attempt in range(BATCH_RETRIES + 1):
            try:
                appended, done = self._write(batch)
            except DBAPIError as error:
                if attempt < BATCH_RETRIES:
                    log.warning("result batch of %d failed, trying again: %s", len(batch), error)
                    continue
                self._fail(batch, error)
                return
            except Exception as error:  # the log refused, the process is failing: all fail
                self._fail(batch, error)
                return
            break
        self.batches += 1
        self.items += len(done)
        metrics_of(self).result_batch(len(done))
        logged = [stored for stored in done if stored.entry is not None]
        for stored in done:
            if stored.entry is None:  # nothing logged: committed is all it waits for
                stored.job.future.set_result(Committed(stored.value, None))
        if appended is None or not logged:
            return
        try:
            receipts = self.translog.receipts(
                appended, [(stored.index, stored.entry) for stored in logged]
            )
        except Exception as error:
            self._fail([stored.job for stored in logged], error)
            return
        for stored, receipt in zip(logged, receipts, strict=True):
            stored.job.future.set_result(Committed(stored.value, receipt))

    def _write(self, batch: list[_Job]) -> tuple[Any, list[_Stored]]:
        """One transaction: every item claimed, the entries appended, indices recorded. The
        append (``Appended``, None when no item was claimed) and what was stored."""
        claimed: list[tuple[_Job, Sequence[bytes]]] = []
        rejected: list[tuple[_Job, BaseException]] = []
        appended = None
        done: list[_Stored] = []
        with self.engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                # Take the write lock before the first read: every check below then sees the
                # newest commit, and no other writer commits until this batch does.
                lock_state_row(connection)
            for job in batch:
                try:
                    entries = job.item.claim(connection)
                except DBAPIError:
                    raise  # the database failed, not the item: the batch is tried again
                except Exception as error:
                    rejected.append((job, error))
                    continue
                claimed.append((job, entries))
            _write_shared_rows(connection, [job.item for job, _ in claimed])
            entries_claimed = [entry for _, entries in claimed for entry in entries]
            if entries_claimed:
                appended = self.translog.append(connection, *entries_claimed)
            index = appended.start if appended is not None else 0
            for job, entries in claimed:
                if not entries:
                    done.append(_Stored(job, job.item.logged(connection, None), None, None))
                    continue
                index += len(entries)
                value = job.item.logged(connection, index - 1)
                done.append(_Stored(job, value, entries[-1], index - 1))
        # Only once the transaction committed: a rejected item's caller may retry at once.
        for job, refusal in rejected:
            job.future.set_exception(refusal)
        return appended, done

    @staticmethod
    def _fail(batch: Sequence[_Job], error: BaseException) -> None:
        for job in batch:
            if not job.future.done():
                job.future.set_exception(error)


def _write_shared_rows(connection: Connection, items: Sequence[Any]) -> None:
    """The claimed items' ``shared_rows``, each key once, in key order (every batch locks
    them in one order: no deadlock between replicas inserting the same rows)."""
    rows: dict[str, Any] = {}
    for item in items:
        for row in getattr(item, "shared_rows", ()):
            rows.setdefault(row.key, row)
    for key in sorted(rows):
        rows[key].write(connection)
