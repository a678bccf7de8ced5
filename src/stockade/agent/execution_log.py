"""The node's execution log: a CEL-TLV file of every execution record this boot
(docs/execution-log.md).

- Append-only: opened with O_APPEND, each record written whole, under an exclusive
  ``flock`` on the file, and ``fsync``'d (with the directory, when the append created
  the file) before ``append`` returns, i.e. before the container may start.
- Record numbers start at 0 and are consecutive; the file is per boot: the caller
  truncates it at boot (``truncate``), before the first record of the boot.
- Write-ahead: the hook appends a record as *pending* (content type 0xC6) before it
  extends PCR 13, then rewrites that one byte to 0xC5 (``mark``); a pending record whose
  extend never happened is marked abandoned (0xC7) by the next hook
  (``evidence.execution``). A crash therefore never leaves an extend without a record.
- A torn tail (bytes after the last complete record that are not a record: a crash or a
  full disk mid-append) is never appended to (``ExecutionLogTorn``, the hook fails
  closed). The agent reads past it (``read_with_tail``), reports it to the verifier, and
  only then sets it aside (``set_aside``: a copy in ``<log>.torn-<offset>``, then the log
  truncated to its complete records). Any other damage (numbering, a PCR other than 13)
  is ``ExecutionLogCorrupt`` for good.

The runtime hook holds the lock across append, PCR extend and mark, and the agent holds
it across its quote and ``read_from``, so a quote never sees a record half-written::

    with log.locked():
        recnum = log.append_pending(content, digests)
        tpm.extend_pcr(EXECUTION_PCR, content)
        log.mark(recnum, CONTENT_TYPE)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from stockade.errors import StockadeError
from stockade.evidence.cel import MalformedCel, TruncatedCel, iter_cel, marshal_record
from stockade.evidence.execution import (
    EXECUTION_PCR,
    PENDING_CONTENT_TYPE,
    STATUS_CONTENT_TYPES,
    with_status,
)

FILE_MODE = 0o600


class ExecutionLogError(StockadeError):
    """The execution log cannot be used as asked."""


class ExecutionLogCorrupt(ExecutionLogError):
    """The file on disk is not a consecutive CEL log from record 0."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"execution log {path} is corrupt: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class TornTail:
    """Bytes after the last complete record that are not a record: ``recnum`` is the
    number the record being written would have had, ``offset`` its byte offset in the
    file, ``data`` the bytes found there (to the end of the file)."""

    recnum: int
    offset: int
    data: bytes
    reason: str  # what the parser found, e.g. "content of 412 bytes runs past the end"
    truncated: bool  # the bytes are a prefix of a record (a torn write), not garbage

    def describe(self) -> str:
        kind = "torn tail" if self.truncated else "malformed tail"
        return (
            f"{kind}: record {self.recnum} at byte offset {self.offset} is incomplete"
            f" ({len(self.data)} bytes: {self.reason})"
        )


class ExecutionLogTorn(ExecutionLogCorrupt):
    """The log ends in a torn tail: nothing may be appended until the agent has reported
    it to the verifier and set it aside."""

    def __init__(self, path: Path, tail: TornTail) -> None:
        super().__init__(
            path,
            f"{tail.describe()}; the agent reports it to the verifier and then sets it aside",
        )
        self.tail = tail


class RecordsNotInLog(ExecutionLogError):
    """``read_from`` asked for records beyond the end of this boot's log."""

    def __init__(self, path: Path, recnum: int, next_recnum: int) -> None:
        super().__init__(
            f"execution log {path} has records 0-{next_recnum - 1}, not record {recnum}"
            if next_recnum
            else f"execution log {path} is empty, it has no record {recnum}"
        )
        self.recnum = recnum
        self.next_recnum = next_recnum


class ExecutionLog:
    """One node's execution log file. Safe across processes (each hook invocation is
    its own process) through ``flock``; one instance is not meant for several threads.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fd: int | None = None  # held while locked()
        self._exclusive = False
        # Cache of the scan: (device, inode, size) -> record offsets, their end, the tail.
        self._scanned: tuple[int, int, int] | None = None
        self._offsets: list[int] = []
        self._end = 0
        self._tail: TornTail | None = None

    # -- locking -----------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the log's exclusive lock (re-entrant within this instance)."""
        if self._fd is not None:
            if not self._exclusive:
                raise ExecutionLogError("execution log is locked shared; cannot upgrade")
            yield
            return
        fd, created = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if created:
                self._sync_directory()
            self._fd, self._exclusive = fd, True
            yield
        finally:
            self._fd, self._exclusive = None, False
            os.close(fd)  # closing the last descriptor releases the flock

    @contextlib.contextmanager
    def _shared(self) -> Iterator[int | None]:
        """A descriptor to read under at least a shared lock (None: no file yet)."""
        if self._fd is not None:
            yield self._fd
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield fd
        finally:
            os.close(fd)

    def _open(self) -> tuple[int, bool]:
        flags = os.O_RDWR | os.O_APPEND | os.O_CLOEXEC
        try:
            return os.open(self.path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE), True
        except FileExistsError:
            return os.open(self.path, flags), False

    def _sync_directory(self) -> None:
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    # -- reading -----------------------------------------------------------

    def _scan(self, fd: int) -> tuple[list[int], int, TornTail | None]:
        """Offsets of every complete record, the byte offset where they end, and the torn
        tail after them (if any). Reads only what was appended since the last scan when
        the file is the one scanned before and grew."""
        status = os.fstat(fd)
        key = (status.st_dev, status.st_ino, status.st_size)
        cached = self._scanned
        if cached == key:
            return self._offsets, self._end, self._tail
        if (
            cached is not None
            and cached[:2] == key[:2]
            and cached[2] <= status.st_size
            and self._tail is None
        ):
            start, offsets = cached[2], list(self._offsets)
        else:
            start, offsets = 0, []
        data = _read_range(fd, start, status.st_size)
        position = start
        tail = None
        try:
            for record in iter_cel(data):
                if record.recnum != len(offsets):
                    raise ExecutionLogCorrupt(
                        self.path,
                        f"record {record.recnum} at byte offset {position}"
                        f" where record {len(offsets)} belongs",
                    )
                if record.pcr != EXECUTION_PCR:
                    raise ExecutionLogCorrupt(
                        self.path, f"record {record.recnum} is not for PCR {EXECUTION_PCR}"
                    )
                offsets.append(position)
                position += record.size
        except MalformedCel as error:
            tail = TornTail(
                recnum=len(offsets),
                offset=position,
                data=data[position - start :],
                reason=f"{error.reason} at byte offset {start + error.offset}",
                truncated=isinstance(error, TruncatedCel),
            )
        self._scanned, self._offsets, self._end, self._tail = key, offsets, position, tail
        return offsets, position, tail

    def _complete(self, fd: int) -> tuple[list[int], int]:
        offsets, end, tail = self._scan(fd)
        if tail is not None:
            raise ExecutionLogTorn(self.path, tail)
        return offsets, end

    def next_recnum(self) -> int:
        """The record number the next append gets (0 for an empty or missing log)."""
        with self._shared() as fd:
            if fd is None:
                return 0
            offsets, _ = self._complete(fd)
            return len(offsets)

    def read_from(self, recnum: int) -> bytes:
        """The raw CEL bytes of every record numbered ``recnum`` or more (empty when
        ``recnum`` is the next record number); ``ExecutionLogTorn`` on a torn tail."""
        records, tail = self.read_with_tail(recnum)
        if tail is not None:
            raise ExecutionLogTorn(self.path, tail)
        return records

    def read_with_tail(self, recnum: int) -> tuple[bytes, TornTail | None]:
        """``read_from``, except that a torn tail is returned beside the complete records
        rather than raised."""
        if recnum < 0:
            raise ExecutionLogError(f"record numbers start at 0, not {recnum}")
        with self._shared() as fd:
            if fd is None:
                if recnum:
                    raise RecordsNotInLog(self.path, recnum, 0)
                return b"", None
            offsets, end, tail = self._scan(fd)
            if recnum > len(offsets):
                raise RecordsNotInLog(self.path, recnum, len(offsets))
            if recnum == len(offsets):
                return b"", tail
            return _read_range(fd, offsets[recnum], end), tail

    # -- writing -----------------------------------------------------------

    def append(self, record_content: bytes, digests: Mapping[int, bytes]) -> int:
        """Append one PCR 13 record (``record_content``: the complete content TLV as it
        is written; ``digests``: TPM_ALG_ID -> H_bank(measured content), as extended) and
        fsync it; returns its record number."""
        with self.locked():
            fd = self._fd
            assert fd is not None
            offsets, size = self._complete(fd)
            recnum = len(offsets)
            record = marshal_record(recnum, EXECUTION_PCR, sorted(digests.items()), record_content)
            _write_all(fd, record)
            os.fsync(fd)
            status = os.fstat(fd)
            self._scanned = (status.st_dev, status.st_ino, size + len(record))
            offsets.append(size)
            self._offsets, self._end = offsets, size + len(record)
            return recnum

    def append_pending(self, content: bytes, digests: Mapping[int, bytes]) -> int:
        """Append ``content`` (a Stockade content TLV, as measured) as a pending record,
        durably, before its extend; ``mark`` it once the extend is done."""
        return self.append(with_status(content, PENDING_CONTENT_TYPE), digests)

    def mark(self, recnum: int, content_type: int) -> None:
        """Rewrite pending record ``recnum``'s content type byte to ``content_type``
        (0xC5 done, 0xC7 abandoned), durably. One byte in place: a crash leaves either
        the old or the new status, never a torn record."""
        if content_type not in STATUS_CONTENT_TYPES or content_type == PENDING_CONTENT_TYPE:
            raise ExecutionLogError(f"{content_type:#x} is not a final record status")
        with self.locked():
            fd = self._fd
            assert fd is not None
            offsets, end = self._complete(fd)
            if not 0 <= recnum < len(offsets):
                raise RecordsNotInLog(self.path, recnum, len(offsets))
            stop = offsets[recnum + 1] if recnum + 1 < len(offsets) else end
            record = next(iter_cel(_read_range(fd, offsets[recnum], stop)))
            if record.content_type != PENDING_CONTENT_TYPE:
                raise ExecutionLogError(
                    f"record {recnum} has content type {record.content_type:#x}, not pending"
                )
            position = offsets[recnum] + record.size - len(record.content)
            # pwrite on an O_APPEND descriptor appends on Linux: write through another.
            writer = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                if os.fstat(writer)[1:2] != os.fstat(fd)[1:2]:
                    raise ExecutionLogError(f"{self.path} was replaced while locked")
                os.pwrite(writer, bytes((content_type,)), position)
                os.fsync(writer)
            finally:
                os.close(writer)

    def set_aside(self, tail: TornTail) -> Path:
        """Copy a torn tail to ``<log>.torn-<offset>`` (fsync'd) and truncate the log to
        its complete records, so appends can resume. Call only once the verifier has been
        told of ``tail``; does nothing (returns the copy's path) if the log no longer ends
        in that tail."""
        aside = self.path.with_name(f"{self.path.name}.torn-{tail.offset}")
        with self.locked():
            fd = self._fd
            assert fd is not None
            _, end, found = self._scan(fd)
            if found != tail:
                return aside
            copy = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
            try:
                _write_all(copy, tail.data)
                os.fsync(copy)
            finally:
                os.close(copy)
            self._sync_directory()
            os.ftruncate(fd, end)
            os.fsync(fd)
            self._scanned, self._offsets, self._tail = None, [], None
            return aside

    def truncate(self) -> None:
        """Empty the log (at boot, before the first record of the boot), durably."""
        with self.locked():
            fd = self._fd
            assert fd is not None
            os.ftruncate(fd, 0)
            os.fsync(fd)
            self._scanned, self._offsets, self._tail = None, [], None


def _read_range(fd: int, start: int, end: int) -> bytes:
    chunks = []
    offset = start
    while offset < end:
        chunk = os.pread(fd, min(end - offset, 1 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
