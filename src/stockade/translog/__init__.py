"""The transparency log: an append-only RFC 9162 Merkle log of attestation results and
container execution records, with C2SP signed checkpoints anyone can verify, compare and
cosign (``../shared/DESIGN.md``, "Audit").

- ``merkle``: hashing, proof generation from stored subtree hashes, proof verification;
- ``checkpoint``: checkpoint bodies, signed notes, note keys, witness cosigning;
- ``store``: ``MerkleLog`` over a SQLAlchemy engine;
- ``entries``: the canonical JSON documents the verifier logs;
- ``keys``: note key files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stockade.strict_json import canonical_json
from stockade.translog.checkpoint import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    add_signature,
    cosign_checkpoint,
    open_checkpoint,
    open_note,
    sign_checkpoint,
    sign_note,
)
from stockade.translog.entries import (
    ATTESTATION_RESULT,
    attestation_result_entry,
    parse_entry,
)
from stockade.translog.errors import (
    BadSignature,
    LogCorrupted,
    LogRangeError,
    MalformedEntry,
    MalformedKey,
    MalformedNote,
    NotEnoughSignatures,
    NoteRejected,
    ProofError,
    TranslogError,
)
from stockade.translog.merkle import (
    EMPTY_ROOT,
    leaf_hash,
    node_hash,
    root_of,
    verify_consistency,
    verify_inclusion,
)

if TYPE_CHECKING:
    from stockade.translog.store import Appended, MerkleLog, create_tables

# The store needs SQLAlchemy (~150 ms to import); readers of checkpoints and proofs (the CLI's
# `stockade log`, monitors, auditors) do not, so it is imported when first asked for.
_STORE_NAMES = frozenset({"Appended", "MerkleLog", "create_tables"})


def __getattr__(name: str) -> Any:
    if name in _STORE_NAMES:
        from stockade.translog import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ATTESTATION_RESULT",
    "EMPTY_ROOT",
    "Appended",
    "BadSignature",
    "Checkpoint",
    "LogCorrupted",
    "LogRangeError",
    "MalformedEntry",
    "MalformedKey",
    "MalformedNote",
    "MerkleLog",
    "NotEnoughSignatures",
    "NoteRejected",
    "NoteSigner",
    "NoteVerifier",
    "ProofError",
    "TranslogError",
    "add_signature",
    "attestation_result_entry",
    "canonical_json",
    "cosign_checkpoint",
    "create_tables",
    "leaf_hash",
    "node_hash",
    "open_checkpoint",
    "open_note",
    "parse_entry",
    "root_of",
    "sign_checkpoint",
    "sign_note",
    "verify_consistency",
    "verify_inclusion",
]
