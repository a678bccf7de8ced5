"""The verifier's transparency log: every stored attestation result is appended, in the
transaction that stores it, to an RFC 9162 Merkle log in the verifier's database
(``stockade.translog.store``), and answered with a receipt: the entry's index and audit
path against a checkpoint signed right after the commit (``stockade.translog.receipt``).

The log's Ed25519 note key is made on first start in ``<data_dir>/keys/``
(``log-signing-key``, 0600; its verifier key string in ``log-key.pub``), named for the
log's origin (C2SP tlog-checkpoint: the key name is the origin), so a key made for one
origin refuses to start under another.

The database is never trusted over what was signed. The newest checkpoint this verifier
signed is kept in memory and in ``<data_dir>/state/latest-checkpoint``
(``stockade.verifier.integrity``), written durably before any receipt or checkpoint of
that size leaves (and, on SQLite, after the WAL holding its commits is fsync'd; on
PostgreSQL a commit is durable when ``synchronous_commit`` is on, its default). Every
append proves, in its own transaction and with the query that reads the peaks it extends,
that the stored tree extends that checkpoint; every checkpoint is signed only when it is
proven to extend (or be a prefix of) the newest one signed. A
database smaller than, or different from, what was signed is refused: appends answer 503
``log-corrupted`` and roll back, nothing is signed, and the verifier refuses to start
below its remembered checkpoint. A larger log made by other replicas is accepted once it
is proven to extend it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path

from sqlalchemy import Connection, Engine

from stockade.translog.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from stockade.translog.errors import LogCorrupted, LogRangeError, MalformedKey
from stockade.translog.keys import load_or_create_signer, load_signer
from stockade.translog.receipt import Receipt
from stockade.translog.store import Appended, MerkleLog, TreeHead, check_extends
from stockade.verifier.datadir import sqlite_path
from stockade.verifier.db import sync_sqlite_wal
from stockade.verifier.errors import ConfigurationError, Unavailable
from stockade.verifier.integrity import CheckpointFile, Remembered

KEYS_DIRECTORY = "keys"
SIGNING_KEY_FILE = "log-signing-key"
PUBLIC_KEY_FILE = "log-key.pub"
# Roots of trees proven to be prefixes of the newest signed checkpoint, kept to sign
# receipts that arrive out of order without a query.
PREFIXES_KEPT = 4096
REFUSAL_LOG_SECONDS = 60.0

log = logging.getLogger(__name__)


class LogUnavailable(Unavailable):
    """The log refuses to append or sign: the database is not what this verifier signed."""

    code = "log-corrupted"


class LogStateUnavailable(Unavailable):
    """The remembered checkpoint could not be written: nothing of that size is handed out."""

    code = "log-state"


@dataclass(frozen=True)
class SignedHead:
    size: int
    root: bytes
    note: bytes


class TransparencyLog:
    """The verifier's log: its store, its signing key, the newest checkpoint it signed."""

    def __init__(
        self,
        engine: Engine,
        signer: NoteSigner,
        clock: Callable[[], datetime],
        state: CheckpointFile | None = None,
        sync_database: Callable[[], None] | None = None,
    ) -> None:
        self.store = MerkleLog(engine, clock=clock)
        self.signer = signer
        self.origin = signer.name
        self.state = state
        self.sync_database = sync_database
        self._lock = threading.Lock()
        self._latest: SignedHead | None = None
        self._prefixes: dict[int, bytes] = {}  # size -> root, each a prefix of _latest
        self._persist_lock = threading.Lock()
        self._persisted = 0
        self._refused: tuple[str, float] | None = None

    @classmethod
    def open(
        cls,
        engine: Engine,
        keys: Path,
        state_dir: Path,
        origin: str,
        clock: Callable[[], datetime],
        *,
        read_only_keys: bool = False,
    ) -> TransparencyLog:
        """The log with the note key in ``keys`` (made there on first start unless
        ``read_only_keys``: shared keys are only read), checked against the checkpoint
        remembered in ``state_dir``: ``ConfigurationError`` (one line) when the key is missing
        or malformed, or when the database's log is smaller than the remembered checkpoint,
        differs from it, or is unreadable."""
        try:
            if read_only_keys:
                if (keys / SIGNING_KEY_FILE).stat().st_mode & 0o077:
                    raise MalformedKey(
                        f"{keys / SIGNING_KEY_FILE} is readable by group or others; chmod 600 it"
                    )
                signer = load_signer(keys / SIGNING_KEY_FILE)
                if signer.name != origin:
                    raise MalformedKey(
                        f"{keys / SIGNING_KEY_FILE} is named {signer.name!r}, not the log "
                        f"origin {origin!r}"
                    )
            else:
                keys.mkdir(mode=0o700, parents=True, exist_ok=True)
                signer = load_or_create_signer(
                    keys / SIGNING_KEY_FILE, keys / PUBLIC_KEY_FILE, origin
                )
        except MalformedKey as error:
            raise ConfigurationError(f"transparency log key: {error}") from None
        except OSError as error:
            raise ConfigurationError(
                f"transparency log key: cannot read {keys / SIGNING_KEY_FILE}: "
                f"{error.strerror or error}"
            ) from None
        state = CheckpointFile(state_dir)
        database = sqlite_path(engine.url.render_as_string(hide_password=False))
        sync = None if database is None else partial(sync_sqlite_wal, database)
        translog = cls(engine, signer, clock, state, sync)
        translog.resume(state.load(signer.verifier, signer.name))
        return translog

    def resume(self, remembered: Remembered | None) -> None:
        """Start from ``remembered`` (the newest checkpoint signed before): the stored log
        must extend it, and its newest entry must be readable and intact."""
        try:
            self.store.check_newest()
            if remembered is None:
                return
            head, proof = self.store.extension(remembered.head)
            check_extends(head.size, head.root, remembered.head, proof)
        except LogCorrupted as error:
            where = f" ({self.state.path})" if self.state is not None else ""
            raise ConfigurationError(
                f"refusing to start: {error}{where}; see docs/operations.md"
            ) from None
        if remembered is not None:
            size, root = remembered.head.size, remembered.head.root
            with self._lock:
                self._latest = SignedHead(size, root, remembered.note)
                self._prefixes = {size: root}
            self._persisted = size

    @property
    def key_string(self) -> str:
        """The verifier key string (``<name>+<id>+<base64>``) that checks its checkpoints."""
        return self.signer.verifier.key_string()

    @property
    def latest(self) -> SignedHead | None:
        """The newest checkpoint this verifier signed (or remembered at start)."""
        with self._lock:
            return self._latest

    def append(self, connection: Connection, *entries: bytes) -> Appended:
        """Append ``entries`` in the caller's transaction; call last, just before commit.
        The returned head and proof are the last entry's. ``LogUnavailable`` (503, the
        caller's transaction must roll back) when the stored log does not extend the newest
        checkpoint signed."""
        with self._lock:
            latest = self._latest
        expect = None if latest is None else TreeHead(latest.size, latest.root)
        try:
            return self.store.append_on(connection, list(entries), expect=expect)
        except LogCorrupted as error:
            raise self._refuse(error) from None

    def receipt(self, appended: Appended, entry: bytes) -> Receipt:
        """After the append committed: its last entry's receipt, against a checkpoint of its
        head that is on disk before it is returned."""
        return self.receipts(appended, [(appended.size - 1, entry)])[0]

    def receipts(self, appended: Appended, entries: Sequence[tuple[int, bytes]]) -> list[Receipt]:
        """After a batch append committed: a receipt for each ``(index, entry)`` of it, all
        against one checkpoint of its head, signed once and on disk before any is returned."""
        note = self._sign_appended(appended)
        self._persist(appended.size)
        return [
            Receipt(
                index,
                appended.size,
                entry,
                appended.last_proof
                if index == appended.size - 1
                else tuple(appended.inclusion_proof(index)),
                note,
            )
            for index, entry in entries
        ]

    def signed_head(self) -> SignedHead:
        """The current head, signed (the cached note when the log has not grown); proven to
        extend the newest checkpoint signed, else ``LogUnavailable``."""
        with self._lock:
            latest = self._latest
        expect = None if latest is None else TreeHead(latest.size, latest.root)
        try:
            head, proof = self.store.extension(expect)
            if expect is not None:
                check_extends(head.size, head.root, expect, proof)
            note = self._sign(head, proven=expect)
        except LogCorrupted as error:
            raise self._refuse(error) from None
        self._persist(head.size)
        return SignedHead(head.size, head.root, note)

    # -- signing ----------------------------------------------------------------------

    def _sign_appended(self, appended: Appended) -> bytes:
        head = TreeHead(appended.size, appended.root)
        try:
            return self._sign(
                head, proven=appended.checked, base=TreeHead(appended.start, appended.base_root)
            )
        except LogCorrupted as error:
            raise self._refuse(error) from None

    def _sign(self, head: TreeHead, proven: TreeHead | None, base: TreeHead | None = None) -> bytes:
        """Sign ``head`` once it is consistent with the newest checkpoint signed. ``proven``
        is a head ``head`` was proven to extend, ``base`` one it extends by construction;
        when neither settles it, the database is asked for a consistency proof."""
        while True:
            with self._lock:
                latest = self._latest
                if latest is None or self._consistent(latest, head, proven, base):
                    return self._sign_locked(latest, head, base)
            proven = self._prove(latest, head) or proven

    def _sign_locked(
        self, latest: SignedHead | None, head: TreeHead, base: TreeHead | None
    ) -> bytes:
        if latest is not None and latest.size == head.size:
            return latest.note  # the same root: _consistent checked it
        note = sign_checkpoint(Checkpoint(self.origin, head.size, head.root), [self.signer])
        if latest is None or head.size > latest.size:
            if latest is not None:
                self._prefixes[latest.size] = latest.root
            if base is not None:
                self._prefixes[base.size] = base.root
            self._prefixes[head.size] = head.root
            if len(self._prefixes) > PREFIXES_KEPT:
                for size in sorted(self._prefixes)[: len(self._prefixes) - PREFIXES_KEPT]:
                    del self._prefixes[size]
            self._latest = SignedHead(head.size, head.root, note)
        return note

    def _consistent(
        self, latest: SignedHead, head: TreeHead, proven: TreeHead | None, base: TreeHead | None
    ) -> bool:
        """Whether ``head`` is known, without a query, to be consistent with ``latest``."""
        if head.size <= latest.size:
            return self._prefixes.get(head.size) == head.root
        signed = (latest.size, latest.root)
        return (proven is not None and (proven.size, proven.root) == signed) or (
            base is not None and (base.size, base.root) == signed
        )

    def _prove(self, latest: SignedHead, head: TreeHead) -> TreeHead | None:
        """Ask the database for the consistency proof between ``latest`` and ``head``;
        ``LogCorrupted`` unless it verifies. When ``head`` is the larger, the head it was
        proven to extend."""
        signed = TreeHead(latest.size, latest.root)
        old, new = (head, signed) if head.size <= signed.size else (signed, head)
        try:
            proof = self.store.consistency_proof(old.size, new.size)
        except LogRangeError as error:
            raise LogCorrupted(
                f"cannot prove the log of {head.size} entries consistent with the signed "
                f"checkpoint of {signed.size}: {error}"
            ) from None
        check_extends(new.size, new.root, old, proof)
        if old is head:
            with self._lock:
                self._prefixes[head.size] = head.root
            return None
        return signed

    # -- remembering ------------------------------------------------------------------

    def _persist(self, size: int) -> None:
        """Make sure the commits behind a checkpoint of at least ``size``, then that
        checkpoint, are on disk. Writers queue on one lock, and each syncs the database and
        writes the newest checkpoint signed: one round of fsyncs covers them all."""
        if self.state is None:
            return
        with self._persist_lock:
            if self._persisted >= size:
                return
            with self._lock:
                latest = self._latest
            assert latest is not None and latest.size >= size
            try:
                if self.sync_database is not None:
                    self.sync_database()
                self.state.write(latest.note)
            except OSError as error:
                message = f"cannot write {self.state.path}: {error.strerror or error}"
                log.error("transparency log: %s", message)
                raise LogStateUnavailable(message) from None
            self._persisted = latest.size

    def _refuse(self, error: LogCorrupted) -> LogUnavailable:
        """The 503 for ``error``, logged once a minute per reason."""
        message = f"transparency log refuses to append or sign: {error}"
        now = time.monotonic()
        with self._lock:
            last = self._refused
            if last is None or last[0] != message or now - last[1] > REFUSAL_LOG_SECONDS:
                self._refused = (message, now)
                log.error("%s", message)
        return LogUnavailable(message)
