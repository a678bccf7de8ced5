"""The transparency log: an append-only RFC 9162 Merkle log of attestation results and
container execution records, with C2SP signed checkpoints anyone can verify, compare and
cosign (``../shared/DESIGN.md``, "Audit").

- ``merkle``: hashing, proof generation from stored subtree hashes, proof verification;
- ``checkpoint``: checkpoint bodies, signed notes, note keys, witness cosigning;
- ``store``: ``MerkleLog`` over a SQLAlchemy engine;
- ``keys``: note key files.
"""

from __future__ import annotations

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
from stockade.translog.errors import (
    BadSignature,
    LogCorrupted,
    LogRangeError,
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
from stockade.translog.store import MerkleLog, create_tables

__all__ = [
    "EMPTY_ROOT",
    "BadSignature",
    "Checkpoint",
    "LogCorrupted",
    "LogRangeError",
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
    "cosign_checkpoint",
    "create_tables",
    "leaf_hash",
    "node_hash",
    "open_checkpoint",
    "open_note",
    "root_of",
    "sign_checkpoint",
    "sign_note",
    "verify_consistency",
    "verify_inclusion",
]
