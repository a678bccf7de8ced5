"""The files tpm2-tools writes: PCR files (serialized and values) and AK public keys."""

from __future__ import annotations

import struct

import pytest
import vectors
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from stockade.evidence import EvidenceError, MalformedStructure, PcrSelection, TpmPublic
from stockade.evidence.algorithms import Alg
from stockade.evidence.tpm2_tools_files import (
    _read_serialized,
    read_pcr_file,
    read_public_key_file,
    write_pcr_file,
)

# The C structs tpm2-tools dumps (little-endian): TPML_PCR_SELECTION is
# UINT32 count + 16 x (UINT16 hash, UINT8 sizeofSelect, BYTE[4], 1 byte padding) = 132;
# then UINT32 number of TPML_DIGEST; each TPML_DIGEST is UINT32 count + 8 x (UINT16, BYTE[64]).
SELECTION_BYTES = 132
DIGEST_LIST_BYTES = 4 + 8 * 66


def serialized_size(lists: int) -> int:
    return SELECTION_BYTES + 4 + lists * DIGEST_LIST_BYTES


def values_for(selection: PcrSelection, pcr_values):
    return [pcr_values.get(alg, index) for alg, index in selection.items()]


def test_real_quote_pcr_file():
    values = read_pcr_file(vectors.QUOTE_PCRS)
    assert len(vectors.QUOTE_PCRS) == serialized_size(1)
    assert values.to_json() == {
        "sha256": {"0": "00" * 32, "1": "00" * 32, "2": "00" * 32, "16": "00" * 32},
        "sha1": {"0": "00" * 20, "3": "00" * 20},
    }
    selection, again = _read_serialized(vectors.QUOTE_PCRS)
    assert again == values
    assert write_pcr_file(selection, values) == vectors.QUOTE_PCRS


@pytest.mark.parametrize(
    ("text", "lists"),
    [
        ("sha256:0-7", 1),
        ("sha256:0-8", 2),
        ("sha256:0-9", 2),
        ("sha256:0-23+sha1:0-23", 6),
        ("sha256:0-23+sha1:0-23+sha384:0-23", 9),
        ("sha1:3+sha384:0-15+sha256:1", 3),
    ],
)
def test_serialized_file_with_several_digest_lists_round_trips(pcr_values, text, lists):
    selection = PcrSelection.parse(text)
    data = write_pcr_file(selection, pcr_values)
    assert len(data) == serialized_size(lists)

    # The layout, decoded by hand.
    assert struct.unpack_from("<I", data, 0)[0] == len(selection.banks)
    for number, bank in enumerate(selection.banks):
        entry = data[4 + 8 * number : 12 + 8 * number]
        assert struct.unpack_from("<HB", entry)[:2] == (bank.hash_alg, 3)
        assert entry[3:7] == bank.bitmap() + b"\x00"
    assert data[4 + 8 * len(selection.banks) : SELECTION_BYTES] == bytes(
        SELECTION_BYTES - 4 - 8 * len(selection.banks)
    )
    assert struct.unpack_from("<I", data, SELECTION_BYTES)[0] == lists
    expected = values_for(selection, pcr_values)
    found = []
    for number in range(lists):
        base = SELECTION_BYTES + 4 + number * DIGEST_LIST_BYTES
        (count,) = struct.unpack_from("<I", data, base)
        assert count == min(8, len(expected) - 8 * number)
        for slot in range(count):
            (size,) = struct.unpack_from("<H", data, base + 4 + 66 * slot)
            found.append(data[base + 6 + 66 * slot : base + 6 + 66 * slot + size])
    assert found == expected

    assert read_pcr_file(data).to_json() == pcr_values.restricted_to(selection).to_json()
    parsed_selection, parsed_values = _read_serialized(data)
    assert parsed_selection == selection
    assert write_pcr_file(parsed_selection, parsed_values) == data


def test_values_format_needs_and_follows_the_selection(pcr_values):
    selection = PcrSelection.parse("sha256:0,1+sha1:3")
    data = b"".join(values_for(selection, pcr_values))
    assert len(data) == 32 + 32 + 20
    values = read_pcr_file(data, selection)
    assert values.get(Alg.SHA256, 0) == pcr_values.get(Alg.SHA256, 0)
    assert values.get(Alg.SHA256, 1) == pcr_values.get(Alg.SHA256, 1)
    assert values.get(Alg.SHA1, 3) == pcr_values.get(Alg.SHA1, 3)
    assert values.get(Alg.SHA1, 0) is None
    with pytest.raises(EvidenceError, match="no PCR selection was given"):
        read_pcr_file(data)


@pytest.mark.parametrize("delta", [-1, +1, -20, +32])
def test_values_of_the_wrong_size_are_rejected(pcr_values, delta):
    selection = PcrSelection.parse("sha256:0,1+sha1:3")
    data = b"".join(values_for(selection, pcr_values))
    data = data[:delta] if delta < 0 else data + bytes(delta)
    with pytest.raises(MalformedStructure, match="needs 84 bytes of values"):
        read_pcr_file(data, selection)


def test_values_file_whose_size_looks_serialized(pcr_values):
    selection = PcrSelection.parse("sha256:0-18+sha1:0-2")
    data = b"".join(values_for(selection, pcr_values))
    assert len(data) == serialized_size(1)
    values = read_pcr_file(data, selection)
    assert values.get(Alg.SHA256, 18) == pcr_values.get(Alg.SHA256, 18)


def _serialized(pcr_values, text="sha256:0,1+sha1:3") -> bytearray:
    return bytearray(write_pcr_file(PcrSelection.parse(text), pcr_values))


def _corrupt(data: bytearray, offset: int, fmt: str, value: int) -> bytes:
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


@pytest.mark.parametrize(
    ("mutate", "error", "message"),
    [
        (lambda d: _corrupt(d, 0, "<I", 17), MalformedStructure, "bank count 17 exceeds 16"),
        (lambda d: _corrupt(d, 4, "<H", 0x0099), MalformedStructure, "unknown PCR bank"),
        (lambda d: _corrupt(d, 6, "<B", 5), MalformedStructure, "sizeofSelect 5"),
        (lambda d: _corrupt(d, 132, "<I", 2), MalformedStructure, "2 digest lists need"),
        (lambda d: _corrupt(d, 136, "<I", 9), MalformedStructure, "digest list count 9"),
        (lambda d: _corrupt(d, 140, "<H", 65), MalformedStructure, "digest size 65"),
        # a sha256 PCR with a sha1-sized value
        (lambda d: _corrupt(d, 140, "<H", 20), EvidenceError, "has 20 bytes, expected 32"),
        # fewer digests than the selection names
        (lambda d: _corrupt(d, 136, "<I", 2), EvidenceError, "names 3 PCRs but 2 values"),
        (lambda d: bytes(d[:-1]), EvidenceError, "not the serialized format"),
        (lambda d: bytes(d[:135]), EvidenceError, "not the serialized format"),
    ],
)
def test_bad_serialized_files_are_rejected(pcr_values, mutate, error, message):
    with pytest.raises(error, match=message):
        read_pcr_file(mutate(_serialized(pcr_values)))


def test_too_short_for_a_selection_is_malformed():
    with pytest.raises(MalformedStructure, match="too short"):
        _read_serialized(bytes(100))


# -- public keys ------------------------------------------------------------------------


def test_tpm2b_public_file_is_read_as_tpm_public():
    public = read_public_key_file(vectors.AK_PUB)
    assert isinstance(public, TpmPublic)
    assert public.name() == vectors.AK_NAME


@pytest.mark.parametrize(
    "encoding", [serialization.Encoding.PEM, serialization.Encoding.DER], ids=["pem", "der"]
)
def test_pem_and_der_keys_are_read(rsa_ak, ecc_ak, encoding):
    for ak in (rsa_ak, ecc_ak):
        data = ak.private.public_key().public_bytes(
            encoding, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key = read_public_key_file(data)
        assert key.public_numbers() == ak.public.public_key().public_numbers()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"not a key",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        vectors.AK_PUB[:-1],
        ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32))
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        ed25519.Ed25519PrivateKey.from_private_bytes(bytes(32))
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    ],
)
def test_unreadable_public_key_files_are_evidence_errors(data):
    with pytest.raises(EvidenceError):
        read_public_key_file(data)


def _unknown_curve_spki(encoding) -> bytes:
    key = ec.derive_private_key(7, ec.SECP256R1()).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # namedCurve P-256 (1.2.840.10045.3.1.7) -> 1.2.840.10045.3.1.9
    der = der.replace(bytes.fromhex("2a8648ce3d030107"), bytes.fromhex("2a8648ce3d030109"))
    if encoding is serialization.Encoding.DER:
        return der
    import base64

    return b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(der) + b"-----END PUBLIC KEY-----\n"


@pytest.mark.parametrize(
    "encoding", [serialization.Encoding.PEM, serialization.Encoding.DER], ids=["pem", "der"]
)
def test_public_key_on_an_unknown_curve_is_an_evidence_error(encoding):
    with pytest.raises(EvidenceError):
        read_public_key_file(_unknown_curve_spki(encoding))
