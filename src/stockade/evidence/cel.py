"""TCG Canonical Event Log, TLV encoding ("CEL-TLV", TCG Canonical Event Log Format).

A log is a plain concatenation of records; a record is four TLVs in this order::

    recnum   type 0, an unsigned big-endian integer (the record's sequence number)
    pcr      type 1, an unsigned big-endian integer (the PCR it extended), or
    nv_index type 2, the NV index it extended (NV_Extend), instead of a PCR
    digests  type 3, a list of nested TLVs: type = TPM_ALG_ID, value = the digest
    content  type >= 4, the event content that was measured (TCG content types are
             4 cel_mgt, 5 pcclient_std, 7 ima_template, 8 ima_tlv; others are vendors')

Each TLV is ``type`` (1 byte), ``length`` (4 bytes, big-endian) and ``length`` bytes of
value. Integers may be written in 1 to 8 bytes (recnum) or 1 to 4 bytes (pcr, nv_index);
go-tpm-tools writes 8 and 1, which is also what ``marshal_record`` writes by default. A
record keeps the widths it was read with, so ``marshal_log(parse_cel(data)) == data``
for every log that parses.

Parsing is strict: every field present, in order, of the right size, each digest of
a known algorithm at most once and of that algorithm's size, nothing after the last
record. Anything else raises a ``MalformedCel`` (an ``EvidenceError``) that names the
record and the byte offset, never another exception. No I/O, no clock.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping
from enum import IntEnum
from typing import NamedTuple

from stockade.evidence.algorithms import DIGEST_SIZES, HASHES
from stockade.evidence.errors import MalformedStructure

TLV_HEADER = struct.Struct(">BI")
HEADER_SIZE = TLV_HEADER.size  # 5
MAX_RECNUM_SIZE = 8
MAX_INDEX_SIZE = 4
MAX_CONTENT_SIZE = 16 * 1024 * 1024
FIRST_CONTENT_TYPE = 4


class CelType(IntEnum):
    """Top-level CEL-TLV field types, and the TCG-assigned content types."""

    RECNUM = 0
    PCR = 1
    NV_INDEX = 2
    DIGESTS = 3
    CEL_MGT = 4
    PCCLIENT_STD = 5
    IMA_TEMPLATE = 7
    IMA_TLV = 8


# Plain ints for the parser's comparisons (IntEnum comparisons cost more).
_RECNUM, _PCR, _NV_INDEX, _DIGESTS = 0, 1, 2, 3
# The fast path's layout: recnum(8) pcr(1) digests(sha1, sha256), then a content header.
_FAST_HEADER = struct.Struct(">BIQBIBBI")
_FAST_DIGESTS = struct.Struct(">BI20sBI32sBI")
_FAST_DIGESTS_LENGTH = 5 + 20 + 5 + 32
_FAST_SIZE = _FAST_HEADER.size + _FAST_DIGESTS.size


class MalformedCel(MalformedStructure):
    """Bytes that are not a well-formed CEL-TLV log.

    ``position`` is the 0-based position of the offending record in the bytes parsed;
    ``recnum`` is its record number when that much of it was read, else ``None``
    (``previous`` is then the record number before it, if any); ``offset`` is the
    byte offset in the bytes parsed."""

    def __init__(
        self,
        position: int,
        recnum: int | None,
        previous: int | None,
        offset: int,
        reason: str,
    ) -> None:
        if recnum is not None:
            where = f"CEL record {recnum}"
        elif previous is not None:
            where = f"CEL record after record {previous}"
        else:
            where = "CEL record" if position == 0 else f"CEL record #{position}"
        super().__init__(where, offset, reason)
        self.position = position
        self.recnum = recnum
        self.previous = previous


class TruncatedCel(MalformedCel):
    """The bytes end inside a record (a torn write, or a log cut short)."""


class UnknownCelDigest(MalformedCel):
    """A digest TLV names an algorithm whose digest size Stockade does not know."""


class CelRecord(NamedTuple):
    """One CEL record. ``content`` is the whole content TLV (type, length, value): the
    bytes the digests are of. Exactly one of ``pcr`` and ``nv_index`` is set.

    A NamedTuple rather than a frozen dataclass: a verifier builds one per record, and
    this is a third of the cost."""

    recnum: int
    pcr: int | None
    nv_index: int | None
    digests: tuple[tuple[int, bytes], ...]  # (TPM_ALG_ID, digest), in log order
    content: bytes
    recnum_size: int = 8
    index_size: int = 1

    @property
    def content_type(self) -> int:
        return self.content[0]

    @property
    def content_value(self) -> bytes:
        return self.content[HEADER_SIZE:]

    @property
    def size(self) -> int:
        """Bytes this record takes in the log (``len(self.marshal())``)."""
        return (
            3 * HEADER_SIZE
            + self.recnum_size
            + self.index_size
            + sum(HEADER_SIZE + len(digest) for _, digest in self.digests)
            + len(self.content)
        )

    def digest(self, algorithm: int) -> bytes | None:
        for alg, value in self.digests:
            if alg == algorithm:
                return value
        return None

    def marshal(self) -> bytes:
        if self.pcr is not None:
            index_type, index = CelType.PCR, self.pcr
        elif self.nv_index is not None:
            index_type, index = CelType.NV_INDEX, self.nv_index
        else:
            raise MalformedCel(
                0, self.recnum, None, 0, "record names neither a PCR nor an NV index"
            )
        return b"".join(
            (
                _int_tlv(CelType.RECNUM, self.recnum, self.recnum_size),
                _int_tlv(index_type, index, self.index_size),
                digests_tlv(self.digests),
                self.content,
            )
        )


def tlv(tlv_type: int, value: bytes) -> bytes:
    """One TLV: type byte, 4-byte big-endian length, value."""
    return TLV_HEADER.pack(tlv_type, len(value)) + value


def _int_tlv(tlv_type: int, value: int, size: int) -> bytes:
    return tlv(tlv_type, value.to_bytes(size, "big"))


def digests_tlv(digests: Iterable[tuple[int, bytes]]) -> bytes:
    return tlv(CelType.DIGESTS, b"".join(tlv(alg, digest) for alg, digest in digests))


def marshal_record(
    recnum: int,
    pcr: int,
    digests: Mapping[int, bytes] | Iterable[tuple[int, bytes]],
    content: bytes,
) -> bytes:
    """A PCR record as Stockade writes it (8-byte recnum, 1-byte PCR, digests in the
    order given, ``content`` a complete content TLV). Checked by parsing it back, so
    a record this returns always parses."""
    pairs = tuple(digests.items() if isinstance(digests, Mapping) else digests)
    data = CelRecord(recnum, pcr, None, pairs, content).marshal()
    parse_cel(data)
    return data


def marshal_log(records: Iterable[CelRecord]) -> bytes:
    return b"".join(record.marshal() for record in records)


def content_tlv(content_type: int, value: bytes) -> bytes:
    """A content TLV; ``content_type`` must be a content type (4-255)."""
    if not FIRST_CONTENT_TYPE <= content_type <= 0xFF:
        raise MalformedCel(0, None, None, 0, f"{content_type} is not a CEL content type")
    return tlv(content_type, value)


def parse_cel(data: bytes) -> tuple[CelRecord, ...]:
    """Every record in ``data``, strictly; ``MalformedCel`` on anything else."""
    return tuple(iter_cel(data))


def iter_cel(data: bytes) -> Iterator[CelRecord]:
    """The records of ``data`` one by one; raises ``MalformedCel`` when it reaches a
    malformed one (the records before it have been yielded)."""
    if not isinstance(data, bytes):
        data = bytes(data)
    end = len(data)
    offset = 0
    position = 0
    previous: int | None = None
    unpack = TLV_HEADER.unpack_from
    from_bytes = int.from_bytes
    digest_sizes = DIGEST_SIZES
    fast_header = _FAST_HEADER.unpack_from
    fast_digests = _FAST_DIGESTS.unpack_from
    while offset < end:
        # Fast path: the layout Stockade writes (8-byte recnum, 1-byte PCR, sha1 then
        # sha256), recognised by its fixed header bytes; anything else, including every
        # malformed record, goes through the general parser below.
        if end - offset >= _FAST_SIZE:
            t0, l0, recnum_, t1, l1, index_, t3, l3, a1, s1, d1, a2, s2, d2, tc, lc = fast_header(
                data, offset
            ) + fast_digests(data, offset + _FAST_HEADER.size)
            if (
                t0 == 0
                and l0 == 8
                and t1 == 1
                and l1 == 1
                and t3 == 3
                and l3 == _FAST_DIGESTS_LENGTH
                and a1 == 0x04
                and s1 == 20
                and a2 == 0x0B
                and s2 == 32
                and tc >= FIRST_CONTENT_TYPE
                and lc <= MAX_CONTENT_SIZE
                and offset + _FAST_SIZE + lc <= end
            ):
                content_start = offset + _FAST_SIZE - HEADER_SIZE
                offset = content_start + HEADER_SIZE + lc
                yield CelRecord(
                    recnum_,
                    index_,
                    None,
                    ((0x04, d1), (0x0B, d2)),
                    data[content_start:offset],
                    8,
                    1,
                )
                previous = recnum_
                position += 1
                continue
        recnum: int | None = None
        try:
            # recnum
            field_type, length = unpack(data, offset)
            if field_type != _RECNUM:
                raise _Bad(offset, f"expected a recnum field (type 0), found type {field_type}")
            if not 1 <= length <= MAX_RECNUM_SIZE:
                raise _Bad(offset, f"recnum is {length} bytes (1 to {MAX_RECNUM_SIZE} allowed)")
            offset += HEADER_SIZE
            recnum_size = length
            if end - offset < length:
                raise _Bad(offset, "the log ends inside the recnum value", truncated=True)
            recnum = from_bytes(data[offset : offset + length], "big")
            offset += length

            # pcr or nv_index
            field_type, length = unpack(data, offset)
            if field_type not in (_PCR, _NV_INDEX):
                raise _Bad(
                    offset,
                    f"expected a pcr or nv_index field (type 1 or 2), found type {field_type}",
                )
            if not 1 <= length <= MAX_INDEX_SIZE:
                name = "pcr" if field_type == _PCR else "nv_index"
                raise _Bad(offset, f"{name} is {length} bytes (1 to {MAX_INDEX_SIZE} allowed)")
            offset += HEADER_SIZE
            index_size = length
            if end - offset < length:
                raise _Bad(offset, "the log ends inside the pcr value", truncated=True)
            index = from_bytes(data[offset : offset + length], "big")
            offset += length
            pcr, nv_index = (index, None) if field_type == _PCR else (None, index)

            # digests: nested TLVs keyed by TPM_ALG_ID
            field_type, length = unpack(data, offset)
            if field_type != _DIGESTS:
                raise _Bad(offset, f"expected a digests field (type 3), found type {field_type}")
            offset += HEADER_SIZE
            digests_end = offset + length
            if digests_end > end:
                raise _Bad(
                    offset - HEADER_SIZE, f"digests field of {length} bytes runs past the end", True
                )
            if length == 0:
                raise _Bad(offset, "digests field is empty")
            digests: list[tuple[int, bytes]] = []
            while offset < digests_end:
                if digests_end - offset < HEADER_SIZE:
                    raise _Bad(offset, "digest TLV header runs past the digests field")
                alg, size = unpack(data, offset)
                expected = digest_sizes.get(alg)
                if expected is None:
                    raise _Bad(
                        offset, f"unknown digest algorithm 0x{alg:04x}", kind=UnknownCelDigest
                    )
                if size != expected:
                    raise _Bad(offset, f"{_alg_name(alg)} digest is {size} bytes, not {expected}")
                for seen, _ in digests:
                    if seen == alg:
                        raise _Bad(offset, f"second {_alg_name(alg)} digest")
                offset += HEADER_SIZE
                if digests_end - offset < size:
                    raise _Bad(offset, f"{_alg_name(alg)} digest runs past the digests field")
                digests.append((alg, data[offset : offset + size]))
                offset += size

            # content: the whole TLV is kept, it is what the digests are of
            field_type, length = unpack(data, offset)
            if field_type < FIRST_CONTENT_TYPE:
                raise _Bad(offset, f"expected a content field (type >= 4), found type {field_type}")
            if length > MAX_CONTENT_SIZE:
                raise _Bad(offset, f"content of {length} bytes exceeds {MAX_CONTENT_SIZE}")
            content_start = offset
            offset += HEADER_SIZE + length
            if offset > end:
                raise _Bad(
                    content_start,
                    f"content of {length} bytes runs past the end",
                    truncated=True,
                )
        except struct.error:
            raise TruncatedCel(
                position, recnum, previous, offset, "the log ends inside a field header"
            ) from None
        except _Bad as bad:
            kind = TruncatedCel if bad.truncated else bad.kind
            raise kind(position, recnum, previous, bad.offset, bad.reason) from None
        yield CelRecord(
            recnum,
            pcr,
            nv_index,
            tuple(digests),
            data[content_start:offset],
            recnum_size,
            index_size,
        )
        previous = recnum
        position += 1


class _Bad(Exception):
    """Internal: what went wrong and where, before the record context is attached."""

    def __init__(
        self,
        offset: int,
        reason: str,
        truncated: bool = False,
        kind: type[MalformedCel] = MalformedCel,
    ) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason
        self.truncated = truncated
        self.kind = kind


def _alg_name(alg: int) -> str:
    known = HASHES.get(alg)
    return known.name if known else f"0x{alg:04x}"
