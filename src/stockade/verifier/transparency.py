"""The verifier's transparency log: every stored attestation result is appended, in the
transaction that stores it, to an RFC 9162 Merkle log in the verifier's database
(``stockade.translog.store``), and answered with a receipt: the entry's index and audit
path against a checkpoint signed right after the commit (``stockade.translog.receipt``).

The log's Ed25519 note key is made on first start in ``<data_dir>/keys/``
(``log-signing-key``, 0600; its verifier key string in ``log-key.pub``), named for the
log's origin (C2SP tlog-checkpoint: the key name is the origin), so a key made for one
origin refuses to start under another.

Checkpoints are signed from the head an append returns (no extra query), and the newest
one is kept in memory: the same size is never signed with two roots, and a head read that
is smaller than a checkpoint this process already signed (rows deleted behind its back)
is refused rather than signed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, Engine

from stockade.translog.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from stockade.translog.errors import LogCorrupted, MalformedKey
from stockade.translog.keys import load_or_create_signer
from stockade.translog.receipt import Receipt
from stockade.translog.store import Appended, MerkleLog
from stockade.verifier.errors import ConfigurationError

KEYS_DIRECTORY = "keys"
SIGNING_KEY_FILE = "log-signing-key"
PUBLIC_KEY_FILE = "log-key.pub"


@dataclass(frozen=True)
class SignedHead:
    size: int
    root: bytes
    note: bytes


class TransparencyLog:
    """The verifier's log: its store, its signing key, the newest checkpoint it signed."""

    def __init__(self, engine: Engine, signer: NoteSigner, clock: Callable[[], datetime]) -> None:
        self.store = MerkleLog(engine, clock=clock)
        self.signer = signer
        self.origin = signer.name
        self._lock = threading.Lock()
        self._latest: SignedHead | None = None
        self._tip: Appended | None = None  # the newest committed append: its peaks

    @classmethod
    def open(
        cls, engine: Engine, data_dir: Path, origin: str, clock: Callable[[], datetime]
    ) -> TransparencyLog:
        """The log with the key in ``data_dir/keys`` (made on first start)."""
        keys = data_dir / KEYS_DIRECTORY
        keys.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            signer = load_or_create_signer(keys / SIGNING_KEY_FILE, keys / PUBLIC_KEY_FILE, origin)
        except MalformedKey as error:
            raise ConfigurationError(f"transparency log key: {error}") from None
        return cls(engine, signer, clock)

    @property
    def key_string(self) -> str:
        """The verifier key string (``<name>+<id>+<base64>``) that checks its checkpoints."""
        return self.signer.verifier.key_string()

    def append(self, connection: Connection, *entries: bytes) -> Appended:
        """Append ``entries`` in the caller's transaction; call last, just before commit.
        The returned head and proof are the last entry's. When no other append came between,
        the tree's peaks come from the previous committed append, not the database."""
        with self._lock:
            tip = self._tip
        return self.store.append_on(connection, list(entries), known=tip)

    def receipt(self, appended: Appended, entry: bytes) -> Receipt:
        """After the append committed: its receipt, against a checkpoint of its head."""
        with self._lock:
            if self._tip is None or appended.size > self._tip.size:
                self._tip = appended
        note = self._sign(appended.size, appended.root)
        return Receipt(appended.size - 1, appended.size, entry, appended.last_proof, note)

    def signed_head(self) -> SignedHead:
        """The current head, signed (the cached note when the log has not grown)."""
        with self._lock:
            floor = self._latest
        size, root = self.store.head()
        if floor is not None and size < floor.size:
            raise LogCorrupted(
                f"the stored log has {size} entries, but this verifier signed a checkpoint "
                f"of {floor.size}: entries were removed; refusing to sign a rollback"
            )
        return SignedHead(size, root, self._sign(size, root))

    def _checkpoint(self, size: int, root: bytes) -> Checkpoint:
        return Checkpoint(self.origin, size, root)

    def _sign(self, size: int, root: bytes) -> bytes:
        with self._lock:
            latest = self._latest
        if latest is not None and latest.size == size:
            if latest.root != root:
                raise LogCorrupted(
                    f"two roots for size {size} ({latest.root.hex()} signed, {root.hex()} "
                    "read): the stored log was rewritten; refusing to sign a fork"
                )
            return latest.note
        note = sign_checkpoint(self._checkpoint(size, root), [self.signer])
        with self._lock:
            if self._latest is None or size > self._latest.size:
                self._latest = SignedHead(size, root, note)
        return note
