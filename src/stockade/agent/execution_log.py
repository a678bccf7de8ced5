"""The node's execution log: a CEL-TLV file of every execution record this boot
(docs/execution-log.md).

- Append-only: opened with O_APPEND, each record written whole, under an exclusive
  ``flock`` on the file, and ``fsync``'d (with the directory, when the append created
  the file) before ``append`` returns, i.e. before the container may start.
- Record numbers start at 0 and are consecutive; the file is per boot: the caller
  truncates it at boot (``truncate``), before the first record of the boot.
- A file that does not parse as a consecutive CEL log (e.g. a torn write after a
  crash) is never appended to: ``ExecutionLogCorrupt``, and the hook fails closed.

The runtime hook holds the lock across its PCR extend and its append, and the agent
holds it across its quote and ``read_from``, so a quote never sees the PCR and the log
disagree::

    with log.locked():
        tpm.extend_pcr(EXECUTION_PCR, content)
        log.append(content, digests)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from stockade.errors import StockadeError
from stockade.evidence.cel import MalformedCel, iter_cel, marshal_record
from stockade.evidence.execution import EXECUTION_PCR

FILE_MODE = 0o600


class ExecutionLogError(StockadeError):
    """The execution log cannot be used as asked."""


class ExecutionLogCorrupt(ExecutionLogError):
    """The file on disk is not a consecutive CEL log from record 0."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"execution log {path} is corrupt: {reason}")
        self.path = path
        self.reason = reason


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
        # Cache of the scanned prefix: (device, inode, size) -> record offsets.
        self._scanned: tuple[int, int, int] | None = None
        self._offsets: list[int] = []

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

    def _scan(self, fd: int) -> tuple[list[int], int]:
        """Offsets of every record in the file, and its size. Reads only what was
        appended since the last scan when the file is the one scanned before and grew."""
        status = os.fstat(fd)
        key = (status.st_dev, status.st_ino, status.st_size)
        cached = self._scanned
        if cached == key:
            return self._offsets, status.st_size
        if cached is not None and cached[:2] == key[:2] and cached[2] <= status.st_size:
            start, offsets = cached[2], list(self._offsets)
        else:
            start, offsets = 0, []
        data = _read_range(fd, start, status.st_size)
        position = start
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
            raise ExecutionLogCorrupt(
                self.path,
                f"{error.structure}: {error.reason} at byte offset {start + error.offset}",
            ) from None
        self._scanned, self._offsets = key, offsets
        return offsets, status.st_size

    def next_recnum(self) -> int:
        """The record number the next append gets (0 for an empty or missing log)."""
        with self._shared() as fd:
            if fd is None:
                return 0
            offsets, _ = self._scan(fd)
            return len(offsets)

    def read_from(self, recnum: int) -> bytes:
        """The raw CEL bytes of every record numbered ``recnum`` or more (empty when
        ``recnum`` is the next record number)."""
        if recnum < 0:
            raise ExecutionLogError(f"record numbers start at 0, not {recnum}")
        with self._shared() as fd:
            if fd is None:
                if recnum:
                    raise RecordsNotInLog(self.path, recnum, 0)
                return b""
            offsets, size = self._scan(fd)
            if recnum > len(offsets):
                raise RecordsNotInLog(self.path, recnum, len(offsets))
            if recnum == len(offsets):
                return b""
            return _read_range(fd, offsets[recnum], size)

    # -- writing -----------------------------------------------------------

    def append(self, record_content: bytes, digests: Mapping[int, bytes]) -> int:
        """Append one PCR 13 record (``record_content``: the complete content TLV;
        ``digests``: TPM_ALG_ID -> H_bank(content), as extended) and fsync it; returns
        its record number."""
        with self.locked():
            fd = self._fd
            assert fd is not None
            offsets, size = self._scan(fd)
            recnum = len(offsets)
            record = marshal_record(recnum, EXECUTION_PCR, sorted(digests.items()), record_content)
            _write_all(fd, record)
            os.fsync(fd)
            status = os.fstat(fd)
            self._scanned = (status.st_dev, status.st_ino, size + len(record))
            offsets.append(size)
            self._offsets = offsets
            return recnum

    def truncate(self) -> None:
        """Empty the log (at boot, before the first record of the boot), durably."""
        with self.locked():
            fd = self._fd
            assert fd is not None
            os.ftruncate(fd, 0)
            os.fsync(fd)
            self._scanned, self._offsets = None, []


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
