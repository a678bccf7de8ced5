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

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from stockade.translog.store import Appended, MerkleLog, create_tables

# Each name is imported from its module when first asked for: the store needs SQLAlchemy
# (~150 ms), checkpoints the cryptography stack (~15 ms), and a reader of one part (the CLI's
# `stockade log`, which sends its request first) should pay for none of the others.
_MODULES = {
    "stockade.strict_json": ("canonical_json",),
    "stockade.translog.checkpoint": (
        "Checkpoint", "NoteSigner", "NoteVerifier", "add_signature", "cosign_checkpoint",
        "open_checkpoint", "open_note", "sign_checkpoint", "sign_note",
    ),
    "stockade.translog.entries": ("ATTESTATION_RESULT", "attestation_result_entry", "parse_entry"),
    "stockade.translog.errors": (
        "BadSignature", "LogCorrupted", "LogRangeError", "MalformedEntry", "MalformedKey",
        "MalformedNote", "NotEnoughSignatures", "NoteRejected", "ProofError", "TranslogError",
    ),
    "stockade.translog.merkle": (
        "EMPTY_ROOT", "leaf_hash", "node_hash", "root_of", "verify_consistency",
        "verify_inclusion",
    ),
    "stockade.translog.store": ("Appended", "MerkleLog", "create_tables"),
}  # fmt: skip
_HOME = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)


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
