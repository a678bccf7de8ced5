"""EFI_SIGNATURE_LIST (UEFI 2.10, 32.4.1): the contents of PK, KEK, db and dbx.

A variable holds a sequence of lists; each list has one signature type and
entries of a fixed size, each an owner GUID followed by the signature data
(an X.509 certificate in DER, or a SHA-256 digest of an image).
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass
from typing import Any

from stockade.evidence.errors import MalformedStructure

EFI_CERT_X509_GUID = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072")
EFI_CERT_SHA256_GUID = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328")
_HEADER = struct.Struct("<16sIII")


@dataclass(frozen=True)
class SignatureEntry:
    owner: uuid.UUID
    data: bytes


@dataclass(frozen=True)
class SignatureList:
    signature_type: uuid.UUID
    header: bytes
    signature_size: int
    entries: tuple[SignatureEntry, ...]

    @property
    def is_x509(self) -> bool:
        return self.signature_type == EFI_CERT_X509_GUID

    @property
    def is_sha256(self) -> bool:
        return self.signature_type == EFI_CERT_SHA256_GUID

    def marshal(self) -> bytes:
        size = _HEADER.size + len(self.header) + self.signature_size * len(self.entries)
        out = bytearray(
            _HEADER.pack(self.signature_type.bytes_le, size, len(self.header), self.signature_size)
        )
        out += self.header
        for entry in self.entries:
            out += entry.owner.bytes_le + entry.data
        return bytes(out)

    def to_json(self) -> dict[str, Any]:
        return {
            "SignatureType": str(self.signature_type),
            "SignatureListSize": _HEADER.size
            + len(self.header)
            + self.signature_size * len(self.entries),
            "SignatureHeaderSize": len(self.header),
            "SignatureSize": self.signature_size,
            "Keys": [
                {"SignatureOwner": str(e.owner), "SignatureData": e.data.hex()}
                for e in self.entries
            ],
        }


def parse_signature_lists(data: bytes) -> tuple[SignatureList, ...]:
    """Every EFI_SIGNATURE_LIST in a variable's data, or ``MalformedStructure``."""
    lists = []
    offset = 0
    while offset < len(data):
        where = "EFI_SIGNATURE_LIST"
        if offset + _HEADER.size > len(data):
            raise MalformedStructure(where, offset, "header is truncated")
        type_bytes, list_size, header_size, signature_size = _HEADER.unpack_from(data, offset)
        body = offset + _HEADER.size + header_size
        end = offset + list_size
        if list_size < _HEADER.size + header_size or end > len(data):
            raise MalformedStructure(where, offset, f"SignatureListSize {list_size} is impossible")
        if signature_size < 16 or (end - body) % signature_size:
            raise MalformedStructure(
                where, offset, f"SignatureSize {signature_size} does not divide the list"
            )
        entries = tuple(
            SignatureEntry(
                uuid.UUID(bytes_le=data[position : position + 16]),
                data[position + 16 : position + signature_size],
            )
            for position in range(body, end, signature_size)
        )
        lists.append(
            SignatureList(
                uuid.UUID(bytes_le=type_bytes),
                data[offset + _HEADER.size : body],
                signature_size,
                entries,
            )
        )
        offset = end
    return tuple(lists)
