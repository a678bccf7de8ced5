"""Typed errors of the transparency log.

A proof or a signature that does not hold is a ``VerificationFailed`` (exit code 1); bytes
that do not parse as a note, a checkpoint or a key, or a request the log cannot answer
(an index beyond its size), are an ``InputError`` (exit code 2). Every message names what
failed and the values involved.
"""

from __future__ import annotations

from stockade.errors import InputError, StockadeError, VerificationFailed


class TranslogError(StockadeError):
    """Base class for everything ``stockade.translog`` raises on purpose."""


class ProofError(TranslogError, VerificationFailed):
    """An inclusion or consistency proof does not verify (or cannot be asked for)."""

    exit_code = 1


class MalformedNote(TranslogError, InputError):
    """Bytes that are not a well-formed signed note or checkpoint body."""

    exit_code = 2


class MalformedKey(TranslogError, InputError):
    """A note signer or verifier key string (or key file) that cannot be used."""

    exit_code = 2


class NoteRejected(TranslogError, VerificationFailed):
    """A well-formed note whose signatures do not satisfy the verifier's policy."""

    exit_code = 1


class BadSignature(NoteRejected):
    """A signature by a known key (name and key id match) does not verify."""

    def __init__(self, key_name: str, key_id: int, detail: str = "") -> None:
        suffix = f": {detail}" if detail else ""
        super().__init__(
            f"signature by known key {key_name!r} (key id {key_id:08x}) does not verify{suffix}"
        )
        self.key_name = key_name
        self.key_id = key_id


class NotEnoughSignatures(NoteRejected):
    """Fewer verified signatures than required, or a required key did not sign."""


class MalformedEntry(TranslogError, InputError):
    """Bytes that are not a log entry: not canonical JSON, no type, a field missing."""

    exit_code = 2


class MalformedReceipt(TranslogError, InputError):
    """A JSON inclusion receipt with a member missing or of the wrong kind."""

    exit_code = 2


class EntryMismatch(TranslogError, VerificationFailed):
    """A logged entry that does not describe the record it is claimed to log."""

    exit_code = 1


class LogRangeError(TranslogError, InputError):
    """An index or tree size the log cannot answer for (beyond its size, or negative)."""

    exit_code = 2


class LogCorrupted(TranslogError):
    """The stored log is not what the log wrote: a subtree hash is missing or the
    bookkeeping row is absent. Never a client's fault."""

    exit_code = 1


class SourceUnavailable(Exception):
    """A log source did not answer (unreachable, refused, malformed): a
    ``stockade.translog.monitor.LogSource`` raises it, or a subclass, for anything that is not
    an answer."""
