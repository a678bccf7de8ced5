"""The newest checkpoint this verifier signed, remembered outside the database.

``<data_dir>/state/latest-checkpoint`` holds the signed note of the largest checkpoint this
replica handed out (each replica its own file). It is replaced atomically and fsync'd
(the file and its directory) before any receipt or checkpoint of that size leaves, so a
database that lost commits (a restore, a failover, a crash with asynchronous commit, a
lost SQLite WAL) cannot make the verifier sign a smaller or different log: it refuses to
start below it, naming both sizes (``stockade.verifier.transparency``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from stockade.home import write_atomic
from stockade.translog.checkpoint import NoteVerifier, open_checkpoint
from stockade.translog.errors import TranslogError
from stockade.translog.store import TreeHead
from stockade.verifier.errors import ConfigurationError

STATE_DIRECTORY = "state"
LATEST_CHECKPOINT_FILE = "latest-checkpoint"


@dataclass(frozen=True)
class Remembered:
    head: TreeHead
    note: bytes


class CheckpointFile:
    """``<state_dir>/latest-checkpoint``: the newest signed checkpoint note this replica (or
    worker process) signed. ``state_dir`` is ``VerifierConfig.state_directory``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LATEST_CHECKPOINT_FILE

    def load(self, verifier: NoteVerifier, origin: str) -> Remembered | None:
        """The remembered checkpoint (None before the first one); ``ConfigurationError`` if
        the file is unreadable or not a checkpoint of ``origin`` signed by ``verifier``."""
        try:
            note = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as error:
            raise ConfigurationError(f"cannot read {self.path}: {error.strerror}") from None
        try:
            checkpoint, _ = open_checkpoint(note, [verifier], origin=origin)
        except TranslogError as error:
            raise ConfigurationError(
                f"{self.path} is not a checkpoint of log {origin!r} under this verifier's log "
                f"key ({error}); it belongs to another log: see docs/operations.md"
            ) from None
        return Remembered(TreeHead(checkpoint.size, checkpoint.root), note)

    def write(self, note: bytes) -> None:
        """Replace the file with ``note``, durably (file and directory fsync'd)."""
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.path, note, 0o600)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
