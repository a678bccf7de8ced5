"""Inclusion receipts: an entry, its index, its audit path in a tree of some size, and
(optionally) the signed checkpoint of that tree; everything needed to show offline that
the log holds the entry.

The verifier answers every stored attestation result with one (``inclusion_proof`` in
the evidence response), and ``GET /v1/log/proof/inclusion`` returns one for any entry.
JSON form::

    {"log_index": int, "tree_size": int, "entry": b64, "proof": [b64, ...],
     "checkpoint": "<signed note text>"}

Pure: no I/O.
"""

from __future__ import annotations

import base64
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stockade.strict_json import read_base64, read_integer
from stockade.translog.checkpoint import Checkpoint, NoteVerifier, open_checkpoint
from stockade.translog.entries import ATTESTATION_RESULT, ear_digest, parse_entry
from stockade.translog.errors import EntryMismatch, MalformedReceipt, ProofError
from stockade.translog.merkle import leaf_hash, verify_inclusion


def _b64(value: object, what: str) -> bytes:
    return read_base64(value, f"inclusion receipt: {what}", error=MalformedReceipt)


def _count(value: object, what: str) -> int:
    return read_integer(value, f"inclusion receipt: {what}", error=MalformedReceipt)


@dataclass(frozen=True)
class Receipt:
    log_index: int
    tree_size: int
    entry: bytes
    proof: tuple[bytes, ...]
    checkpoint: bytes | None = None  # the signed note of the tree of ``tree_size`` entries

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "log_index": self.log_index,
            "tree_size": self.tree_size,
            "entry": base64.b64encode(self.entry).decode(),
            "proof": [base64.b64encode(element).decode() for element in self.proof],
        }
        if self.checkpoint is not None:
            document["checkpoint"] = self.checkpoint.decode()
        return document

    @classmethod
    def from_json(cls, document: object) -> Receipt:
        """A receipt from its JSON form; ``MalformedReceipt`` naming the bad member."""
        if not isinstance(document, Mapping):
            raise MalformedReceipt("inclusion receipt is not a JSON object")
        proof = document.get("proof")
        if not isinstance(proof, list):
            raise MalformedReceipt("inclusion receipt: proof is not a list")
        checkpoint = document.get("checkpoint")
        if checkpoint is not None and not isinstance(checkpoint, str):
            raise MalformedReceipt("inclusion receipt: checkpoint is not a string")
        return cls(
            log_index=_count(document.get("log_index"), "log_index"),
            tree_size=_count(document.get("tree_size"), "tree_size"),
            entry=_b64(document.get("entry"), "entry"),
            proof=tuple(_b64(element, f"proof[{n}]") for n, element in enumerate(proof)),
            checkpoint=checkpoint.encode() if checkpoint is not None else None,
        )


@dataclass(frozen=True)
class VerifiedReceipt:
    checkpoint: Checkpoint
    signed_by: list[str]
    entry: dict[str, Any]
    log_index: int


def verify_receipt(
    receipt: Receipt,
    verifiers: Sequence[NoteVerifier],
    *,
    checkpoint: bytes | None = None,
    required: int | Collection[str] = 1,
    origin: str | None = None,
) -> VerifiedReceipt:
    """Check that ``receipt.entry`` is entry ``log_index`` of the log whose checkpoint
    (``checkpoint``, else the receipt's own) is signed by the trusted ``verifiers``.

    ``NoteRejected`` (signature), ``ProofError`` (the audit path, or a checkpoint of
    another size), ``MalformedNote``/``MalformedEntry``/``MalformedReceipt`` (input)."""
    note = checkpoint if checkpoint is not None else receipt.checkpoint
    if note is None:
        raise MalformedReceipt("inclusion receipt has no checkpoint and none was given")
    head, signed_by = open_checkpoint(note, verifiers, required=required, origin=origin)
    if head.size != receipt.tree_size:
        raise ProofError(
            f"the receipt proves entry {receipt.log_index} in the tree of {receipt.tree_size} "
            f"entries, the checkpoint is of {head.size}: fetch a proof for that size "
            f"(GET /v1/log/proof/inclusion?index={receipt.log_index}&size={head.size})"
        )
    verify_inclusion(
        leaf_hash(receipt.entry), receipt.log_index, receipt.tree_size, receipt.proof, head.root
    )
    return VerifiedReceipt(head, signed_by, parse_entry(receipt.entry), receipt.log_index)


def check_result_entry(entry: Mapping[str, Any], result: Mapping[str, Any]) -> None:
    """Check that a logged ``attestation-result`` entry is the one of ``result`` (an
    evidence response, or a stored result: ``result_id``, ``ear``, ``status``);
    ``EntryMismatch`` naming the first field that differs."""
    if entry.get("type") != ATTESTATION_RESULT:
        raise EntryMismatch(f"the logged entry is a {entry.get('type')!r}, not a result")
    ear = result.get("ear")
    if not isinstance(ear, str):
        raise MalformedReceipt("the result has no EAR ('ear') to compare with the log")
    expected = {"result_id": result.get("result_id"), "ear_sha256": ear_digest(ear)}
    if "status" in result:
        expected["status"] = result["status"]
    for name, value in expected.items():
        if entry.get(name) != value:
            raise EntryMismatch(
                f"the logged entry's {name} is {entry.get(name)!r}, the result's is {value!r}"
            )
