"""Following a log: each new checkpoint must be signed by the log's key, must not be
smaller than the last one verified (rollback), must extend it by a valid consistency
proof (fork, rewrite), and, when entries are checked, the new entries must hash to its
root from the complete subtrees the monitor kept of the last one (a served entry that is
not the logged one).

``observe`` does one step against a ``LogSource`` (the verifier's HTTP API in
``stockade log monitor``, anything in tests) and returns the new ``MonitorState`` to
persist; it raises ``Alert`` (exit 1), naming what was seen, and then the last verified
state must be kept.

A log can also misbehave by saying nothing: serving a signed checkpoint and then never the
proof that it extends the last one verified (a fork it hides), or freezing. ``observe``
raises ``Withheld`` when the source fails after a newer signed checkpoint was seen, and
``Watch`` turns that, after ``proof_retries`` failed attempts in a row, into an ``Alert``
(``withholding``); with ``max_age`` it alerts (``stale``) when no checkpoint larger than the
last verified one has been verified for that long. Pure apart from the source; time is given.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from stockade.errors import VerificationFailed
from stockade.translog.checkpoint import Checkpoint, NoteVerifier, open_checkpoint
from stockade.translog.errors import (
    MalformedNote,
    NoteRejected,
    ProofError,
    SourceUnavailable,
    TranslogError,
)
from stockade.translog.merkle import (
    EMPTY_ROOT,
    compact_append,
    fold_right,
    leaf_hash,
    verify_consistency,
)

ENTRIES_PAGE = 1000


class Alert(TranslogError, VerificationFailed):
    """The log misbehaved: ``kind`` is ``signature``, ``rollback``, ``fork`` or
    ``entries``."""

    exit_code = 1

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class Withheld(Exception):
    """A signed checkpoint newer than the last verified one was served, but not what proves
    it (its consistency proof or its entries)."""

    def __init__(self, head: Checkpoint, what: str, error: Exception) -> None:
        super().__init__(
            f"checkpoint {head.size} was signed, but its {what} was not served: {error}"
        )
        self.head = head
        self.what = what


class LogSource(Protocol):
    def checkpoint(self) -> bytes:
        """The log's current signed checkpoint note."""

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]: ...

    def entries(self, start: int, end: int) -> list[tuple[bytes, bytes]]:
        """``(entry, leaf hash)`` for ``start <= i < end`` from ``start`` on; may stop
        early (a page), never empty while ``start < end``."""


@dataclass(frozen=True)
class MonitorState:
    """The last verified checkpoint and, when entries were checked from the start, the
    hashes of its complete subtrees (``merkle.subtree_ids(0, size)``, largest first)."""

    note: bytes
    checkpoint: Checkpoint
    peaks: tuple[bytes, ...] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": self.note.decode(),
            "peaks": None
            if self.peaks is None
            else [base64.b64encode(peak).decode() for peak in self.peaks],
        }

    @classmethod
    def from_json(cls, document: object, key: NoteVerifier, origin: str) -> MonitorState:
        """A saved state, its checkpoint verified again with ``key`` (a state file from
        another log, or edited, is refused: ``NoteRejected`` / ``MalformedNote``)."""
        if not isinstance(document, dict) or not isinstance(document.get("checkpoint"), str):
            raise MalformedNote("monitor state is not {'checkpoint': note, 'peaks': [...]}")
        note = document["checkpoint"].encode()
        checkpoint, _ = open_checkpoint(note, [key], required=[key.name], origin=origin)
        raw = document.get("peaks")
        peaks: tuple[bytes, ...] | None = None
        if raw is not None:
            if not isinstance(raw, list) or not all(isinstance(peak, str) for peak in raw):
                raise MalformedNote("monitor state: peaks is not a list of base64 hashes")
            try:
                peaks = tuple(base64.b64decode(peak, validate=True) for peak in raw)
            except (binascii.Error, ValueError):
                raise MalformedNote("monitor state: a peak is not base64") from None
            if len(peaks) != checkpoint.size.bit_count() or _root(peaks) != checkpoint.root:
                raise MalformedNote("monitor state: peaks do not match its checkpoint")
        return cls(note, checkpoint, peaks)


@dataclass(frozen=True)
class Observation:
    state: MonitorState
    previous: Checkpoint | None
    entries_checked: int

    @property
    def grew(self) -> bool:
        return self.previous is None or self.state.checkpoint.size > self.previous.size


def _root(peaks: Sequence[bytes]) -> bytes:
    return fold_right(peaks) if peaks else EMPTY_ROOT


def _check_entries(
    source: LogSource, start: int, peaks: Sequence[bytes], head: Checkpoint
) -> tuple[bytes, ...]:
    """Fetch entries ``[start, head.size)``, check each against its served leaf hash and
    all of them against ``head.root``; the grown tree's peaks."""
    position, stack = start, list(peaks)
    while position < head.size:
        page = source.entries(position, min(head.size, position + ENTRIES_PAGE))
        if not page:
            raise Alert("entries", f"the log served no entries from {position} to {head.size}")
        hashes = []
        for offset, (entry, served_hash) in enumerate(page):
            hashed = leaf_hash(entry)
            if hashed != served_hash:
                raise Alert(
                    "entries",
                    f"entry {position + offset} does not hash to the leaf hash served with it "
                    f"({hashed.hex()} != {served_hash.hex()}): the stored entry was rewritten",
                )
            hashes.append(hashed)
        _, stack = compact_append(position, stack, hashes)
        position += len(page)
    if _root(stack) != head.root:
        raise Alert(
            "entries",
            f"the entries served up to {head.size} hash to root {_root(stack).hex()}, the "
            f"signed checkpoint says {head.root.hex()}",
        )
    return tuple(stack)


def observe(
    source: LogSource,
    key: NoteVerifier,
    state: MonitorState | None,
    *,
    origin: str | None = None,
    check_entries: bool = True,
) -> Observation:
    """One monitoring step: fetch, verify, compare with ``state``; the new state, or
    ``Alert``."""
    origin = origin or key.name
    note = source.checkpoint()
    try:
        head, _ = open_checkpoint(note, [key], required=[key.name], origin=origin)
    except (NoteRejected, MalformedNote) as error:
        raise Alert("signature", f"the log's checkpoint does not verify: {error}") from None
    previous = state.checkpoint if state is not None else None
    if previous is not None:
        if head.size < previous.size:
            raise Alert(
                "rollback",
                f"the log shrank from {previous.size} to {head.size} entries (both signed)",
            )
        if head.size == previous.size:
            if head.root != previous.root:
                raise Alert(
                    "fork",
                    f"two signed roots for size {head.size}: {previous.root.hex()} then "
                    f"{head.root.hex()}",
                )
        else:
            try:
                proof = source.consistency_proof(previous.size, head.size)
            except SourceUnavailable as error:
                raise Withheld(head, f"consistency proof from {previous.size}", error) from None
            try:
                verify_consistency(previous.size, head.size, previous.root, head.root, proof)
            except ProofError as error:
                raise Alert(
                    "fork",
                    f"checkpoint {head.size} does not extend checkpoint {previous.size}: {error}",
                ) from None
    checked = 0
    peaks: tuple[bytes, ...] | None = None
    if check_entries:
        if state is not None and state.peaks is not None:
            start, known = state.checkpoint.size, state.peaks
        else:
            start, known = 0, ()
        try:
            peaks = _check_entries(source, start, known, head)
        except SourceUnavailable as error:
            if previous is None or head.size == previous.size:
                raise  # nothing new was signed: an outage, not a withholding
            raise Withheld(head, f"entries {start} to {head.size}", error) from None
        checked = head.size - start
    return Observation(MonitorState(note, head, peaks), previous, checked)


@dataclass
class Watch:
    """What a running monitor remembers between steps to notice a log that goes quiet.

    ``proof_retries``: failed attempts in a row, after a newer signed checkpoint, before the
    withholding is an alert. ``max_age``: seconds without a verified checkpoint larger than the
    last one (``None``: no bound); a Stockade log grows with every attestation, so a bound
    longer than the fleet's attestation interval catches a frozen log.
    """

    started: float
    proof_retries: int = 3
    max_age: float | None = None
    failures: int = 0
    last_growth: float | None = None

    def succeeded(self, observation: Observation, now: float) -> None:
        """After a verified step; ``Alert`` (``stale``) when the log has not grown in time."""
        self.failures = 0
        if observation.grew:
            self.last_growth = now
        self._check_age(now, observation.state.checkpoint.size)

    def failed(self, error: Exception, now: float, size: int | None) -> None:
        """After a step that could not complete: ``Alert`` once a withholding has lasted
        ``proof_retries`` attempts, or when the log has not grown in time; else nothing (the
        caller retries)."""
        if isinstance(error, Withheld):
            self.failures += 1
            if self.failures >= self.proof_retries:
                raise Alert(
                    "withholding",
                    f"{error} ({self.failures} attempts in a row): the log may be hiding a fork",
                )
        self._check_age(now, size)

    def _check_age(self, now: float, size: int | None) -> None:
        if self.max_age is None:
            return
        since = self.last_growth if self.last_growth is not None else self.started
        if now - since > self.max_age:
            at = f"{size} entries" if size is not None else "no verified checkpoint"
            raise Alert(
                "stale",
                f"no checkpoint larger than the last verified ({at}) for {now - since:.0f} s "
                f"(--max-age {self.max_age:g} s): the log is frozen or withheld from this monitor",
            )
