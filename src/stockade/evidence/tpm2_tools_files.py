"""The files tpm2-tools writes, so anyone holding its output can verify it here.

- PCR files from ``tpm2_quote -o`` / ``tpm2_pcrread -o``: ``serialized`` (the
  default) is a little-endian memory image of the C structs: TPML_PCR_SELECTION
  (UINT32 count, 16 TPMS_PCR_SELECTION of 8 bytes with one byte of padding),
  a UINT32 number of TPML_DIGEST, then that many TPML_DIGEST (UINT32 count,
  8 TPM2B_DIGEST of UINT16 size + 64 bytes). ``values`` is the bare digests.
- Public keys from ``tpm2_createak -u`` (TPM2B_PUBLIC) or ``-f pem``.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import UnsupportedAlgorithm as CryptographyUnsupported
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from stockade.evidence.algorithms import DIGEST_SIZES
from stockade.evidence.errors import EvidenceError, MalformedStructure
from stockade.evidence.pcr_selection import BankSelection, PcrSelection, pcrs_in_bitmap
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.public import TpmPublic

_BANKS = 16
_SELECTION_ENTRY = 8  # UINT16 hash, UINT8 sizeofSelect, BYTE[4] pcrSelect, 1 byte padding
_SELECTION_SIZE = 4 + _BANKS * _SELECTION_ENTRY
_DIGESTS_PER_LIST = 8
_DIGEST_ENTRY = 2 + 64
_DIGEST_LIST_SIZE = 4 + _DIGESTS_PER_LIST * _DIGEST_ENTRY
_NAME = "tpm2-tools PCR file"


def _fail(offset: int, reason: str) -> MalformedStructure:
    return MalformedStructure(_NAME, offset, reason)


def _read_serialized(data: bytes) -> tuple[PcrSelection, PcrValues]:
    if len(data) < _SELECTION_SIZE + 4:
        raise _fail(len(data), "too short for a serialized PCR selection")
    (count,) = struct.unpack_from("<I", data, 0)
    if count > _BANKS:
        raise _fail(0, f"bank count {count} exceeds {_BANKS}")
    banks = []
    for bank in range(count):
        offset = 4 + bank * _SELECTION_ENTRY
        hash_alg, size = struct.unpack_from("<HB", data, offset)
        if hash_alg not in DIGEST_SIZES:
            raise _fail(offset, f"unknown PCR bank hash 0x{hash_alg:04x}")
        if size > 4:
            raise _fail(offset + 2, f"sizeofSelect {size} exceeds 4")
        bitmap = data[offset + 3 : offset + 3 + size]
        banks.append(BankSelection(hash_alg, pcrs_in_bitmap(bitmap), size))
    selection = PcrSelection(tuple(banks))

    (lists,) = struct.unpack_from("<I", data, _SELECTION_SIZE)
    expected_size = _SELECTION_SIZE + 4 + lists * _DIGEST_LIST_SIZE
    if len(data) != expected_size:
        raise _fail(
            _SELECTION_SIZE,
            f"{lists} digest lists need {expected_size} bytes, file has {len(data)}",
        )
    digests: list[bytes] = []
    for index in range(lists):
        base = _SELECTION_SIZE + 4 + index * _DIGEST_LIST_SIZE
        (in_list,) = struct.unpack_from("<I", data, base)
        if in_list > _DIGESTS_PER_LIST:
            raise _fail(base, f"digest list count {in_list} exceeds {_DIGESTS_PER_LIST}")
        for slot in range(in_list):
            at = base + 4 + slot * _DIGEST_ENTRY
            (size,) = struct.unpack_from("<H", data, at)
            if size > 64:
                raise _fail(at, f"digest size {size} exceeds 64")
            digests.append(data[at + 2 : at + 2 + size])
    return selection, PcrValues.from_selection(selection, digests)


def _looks_serialized(data: bytes) -> bool:
    return len(data) >= _SELECTION_SIZE + 4 and (
        (len(data) - _SELECTION_SIZE - 4) % _DIGEST_LIST_SIZE == 0
    )


def read_pcr_file(data: bytes, selection: PcrSelection | None = None) -> PcrValues:
    """Read a PCR file in tpm2-tools ``serialized`` format, or ``values`` format
    when ``selection`` says which PCRs the bare digests belong to.

    A values file can have the size of a serialized one; with a selection, the
    serialized reading wins only if it parses and names the same PCRs.
    """
    if selection is None:
        if not _looks_serialized(data):
            raise EvidenceError(
                f"{_NAME}: {len(data)} bytes is not the serialized format, and no PCR "
                "selection was given to read it as bare values"
            )
        return _read_serialized(data)[1]
    if _looks_serialized(data):
        try:
            file_selection, values = _read_serialized(data)
        except EvidenceError:
            pass
        else:
            if file_selection.same_pcrs(selection):
                return values
    return _read_values(data, selection)


def _read_values(data: bytes, selection: PcrSelection) -> PcrValues:
    digests = []
    offset = 0
    for hash_alg, _index in selection.items():
        size = DIGEST_SIZES[hash_alg]
        digests.append(data[offset : offset + size])
        offset += size
    if offset != len(data):
        raise _fail(
            0, f"selection {selection} needs {offset} bytes of values, file has {len(data)}"
        )
    return PcrValues.from_selection(selection, digests)


def write_pcr_file(selection: PcrSelection, values: PcrValues) -> bytes:
    """The ``serialized`` PCR file tpm2_checkquote reads."""
    if len(selection.banks) > _BANKS:
        raise EvidenceError(f"more than {_BANKS} banks")
    out = bytearray(struct.pack("<I", len(selection.banks)))
    for bank in selection.banks:
        out += struct.pack("<HB", bank.hash_alg, bank.size_of_select)
        out += bank.bitmap().ljust(4, b"\0") + b"\0"
    out += bytes(_SELECTION_SIZE - len(out))
    digests = []
    for hash_alg, index in selection.items():
        value = values.get(hash_alg, index)
        if value is None:
            raise EvidenceError(f"no value for PCR 0x{hash_alg:04x}:{index}")
        digests.append(value)
    chunks = [digests[i : i + _DIGESTS_PER_LIST] for i in range(0, len(digests), 8)]
    out += struct.pack("<I", len(chunks))
    for chunk in chunks:
        block = bytearray(struct.pack("<I", len(chunk)))
        for digest in chunk:
            block += struct.pack("<H", len(digest)) + digest.ljust(64, b"\0")
        out += block.ljust(_DIGEST_LIST_SIZE, b"\0")
    return bytes(out)


def read_public_key_file(data: bytes) -> TpmPublic | rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """A TPM2B_PUBLIC (``tpm2_createak -u``), or a PEM/DER SubjectPublicKeyInfo (``-f pem``)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, CryptographyUnsupported) as error:
            raise EvidenceError(f"PEM public key is unreadable: {error}") from None
    elif len(data) >= 2 and int.from_bytes(data[:2], "big") == len(data) - 2:
        return TpmPublic.unmarshal_tpm2b(data)
    else:
        try:
            key = serialization.load_der_public_key(data)
        except (ValueError, CryptographyUnsupported):
            raise EvidenceError(
                "public key file is neither a TPM2B_PUBLIC nor a PEM or DER public key"
            ) from None
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise EvidenceError(f"public key type {type(key).__name__} cannot be a TPM AK")
    return key
