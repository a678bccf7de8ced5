"""The transparency log's API (docs/verifier-protocol.md, "Transparency log"): the signed
checkpoint, the log's key, entries, inclusion and consistency proofs.

Checkpoints, the key and proofs are public and unauthenticated: they reveal hashes, not what
was logged, so anyone may check the log. Entries (which node got which result when) need a
reader or operator credential, like the rest of the trust state. Every answer is computed
from O(log n) stored hashes, except entries, served at most ``MAX_ENTRIES`` at a time. Every
index and size is an integer from 0 to 2**63-1 (422 otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import PlainTextResponse

from stockade.translog.errors import LogCorrupted, LogRangeError
from stockade.translog.receipt import Receipt
from stockade.verifier.errors import BadRequest, Unavailable
from stockade.verifier.operator_auth import ReaderActor
from stockade.verifier.service import service_of
from stockade.verifier.transparency import SignedHead, TransparencyLog
from stockade.verifier.wire import encode_b64

router = APIRouter(tags=["transparency log"])

MAX_ENTRIES = 1000
MAX_INDEX = 2**63 - 1  # sizes and indices are 64-bit signed integers in every database
Index = Annotated[int, Query(ge=0, le=MAX_INDEX)]
Size = Annotated[int, Query(ge=1, le=MAX_INDEX)]
NOTE_MEDIA_TYPE = "text/plain; charset=utf-8"


class Format(StrEnum):
    TEXT = "text"
    JSON = "json"


def _log(request: Request) -> TransparencyLog:
    translog: TransparencyLog = service_of(request).translog
    return translog


def _head(translog: TransparencyLog) -> SignedHead:
    """The signed head; 503 ``log-corrupted`` when the stored log does not extend the newest
    checkpoint this verifier signed (``TransparencyLog.signed_head``)."""
    return translog.signed_head()


def _corrupted(error: LogCorrupted) -> Unavailable:
    return Unavailable(str(error), code="log-corrupted")


def _head_json(translog: TransparencyLog, head: SignedHead) -> dict[str, Any]:
    return {
        "origin": translog.origin,
        "size": head.size,
        "root": encode_b64(head.root),
        "checkpoint": head.note.decode(),
    }


@router.get("/v1/log/checkpoint", response_model=None)
def checkpoint(
    request: Request, format: Annotated[Format, Query()] = Format.TEXT
) -> PlainTextResponse | dict[str, Any]:
    """The log's current checkpoint: a C2SP signed note (``text/plain``), or with
    ``?format=json`` ``{"origin", "size", "root": b64, "checkpoint": note}``."""
    translog = _log(request)
    head = _head(translog)
    if format is Format.JSON:
        return _head_json(translog, head)
    return PlainTextResponse(head.note.decode(), media_type=NOTE_MEDIA_TYPE)


@router.get("/v1/log/key", response_model=None)
def key(
    request: Request, format: Annotated[Format, Query()] = Format.TEXT
) -> PlainTextResponse | dict[str, Any]:
    """The verifier key string that checks the log's checkpoints (``<name>+<id>+<b64>``,
    the name being the origin); ``?format=json``: ``{"origin", "key"}``. Pin it once."""
    translog = _log(request)
    if format is Format.JSON:
        return {"origin": translog.origin, "key": translog.key_string}
    return PlainTextResponse(translog.key_string + "\n", media_type=NOTE_MEDIA_TYPE)


def receipts_at_head(
    translog: TransparencyLog, indices: Iterable[int | None]
) -> dict[int, dict[str, Any]]:
    """The receipt (JSON form, with the signed ``checkpoint``) of each stored log index,
    all against the current signed head: call after reading the rows that carry the indices,
    so every committed index is inside the head. 503 ``log-corrupted`` when the stored log is
    not what was signed or an index is not in it."""
    wanted = sorted({index for index in indices if index is not None})
    if not wanted:
        return {}
    head = _head(translog)
    receipts: dict[int, dict[str, Any]] = {}
    try:
        for index in wanted:
            proof = translog.store.inclusion_proof(index, head.size)
            entry = translog.store.entry(index)
            receipts[index] = Receipt(index, head.size, entry, tuple(proof), head.note).to_json()
    except (LogRangeError, LogCorrupted) as error:
        # A stored result's index outside the signed log is the database disagreeing with
        # the log, not a bad request.
        raise _corrupted(LogCorrupted(str(error))) from None
    return receipts


def _range(error: LogRangeError) -> BadRequest:
    return BadRequest(str(error), code="range")


@router.get("/v1/log/entries")
def entries(
    request: Request,
    _actor: ReaderActor,
    start: Index,
    end: Index | None = None,
) -> dict[str, Any]:
    """Entries ``start <= i < end`` (base64, with their RFC 9162 leaf hashes), at most
    ``MAX_ENTRIES`` and never beyond the log's size: ``end`` in the answer says where they
    stop. ``start`` beyond the size is 400 ``range``."""
    store = _log(request).store
    size = store.size()
    if start > size:
        raise BadRequest(f"start {start} is beyond the log's {size} entries", code="range")
    stop = min(size, start + MAX_ENTRIES, size if end is None else end)
    if stop < start:
        raise BadRequest(f"end {end} is before start {start}", code="range")
    try:
        data = store.entries(start, stop)
        hashes = store.leaf_hashes(start, stop)
    except LogRangeError as error:
        raise _range(error) from None
    except LogCorrupted as error:
        raise _corrupted(error) from None
    return {
        "start": start,
        "end": stop,
        "size": size,
        "entries": [
            {"index": start + offset, "entry": encode_b64(entry), "leaf_hash": encode_b64(hashed)}
            for offset, (entry, hashed) in enumerate(zip(data, hashes, strict=True))
        ],
    }


@router.get("/v1/log/proof/inclusion")
def inclusion_proof(
    request: Request,
    index: Index,
    size: Size | None = None,
) -> dict[str, Any]:
    """The receipt of entry ``index`` in the tree of ``size`` entries: ``{"log_index",
    "tree_size", "entry": b64, "proof": [b64]}``. Without ``size``, against the current
    head, and with its signed ``checkpoint``."""
    translog = _log(request)
    note: bytes | None = None
    if size is None:
        head = _head(translog)
        size, note = head.size, head.note
    try:
        proof = translog.store.inclusion_proof(index, size)
        entry = translog.store.entry(index)
    except LogRangeError as error:
        raise _range(error) from None
    except LogCorrupted as error:
        raise _corrupted(error) from None
    return Receipt(index, size, entry, tuple(proof), note).to_json()


@router.get("/v1/log/proof/consistency")
def consistency_proof(
    request: Request,
    old: Index,
    new: Index | None = None,
) -> dict[str, Any]:
    """The RFC 9162 proof that the tree of ``new`` entries extends the tree of ``old``:
    ``{"old_size", "new_size", "proof": [b64]}``. Without ``new``, to the current head,
    with its signed ``checkpoint``."""
    translog = _log(request)
    answer: dict[str, Any] = {}
    if new is None:
        head = _head(translog)
        new = head.size
        answer["checkpoint"] = head.note.decode()
    try:
        proof = translog.store.consistency_proof(old, new)
    except LogRangeError as error:
        raise _range(error) from None
    except LogCorrupted as error:
        raise _corrupted(error) from None
    answer.update(
        {"old_size": old, "new_size": new, "proof": [encode_b64(element) for element in proof]}
    )
    return answer
