"""Software policy digests against a transcription of TPM 2.0 Part 3, 23.7 and 23.11.

The equality with a real TPM's trial-session digests is in
tests/tpm/test_sealed_secrets.py (tpm2-pytss and tpm2-tools).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace

import pytest

from stockade.evidence import EvidenceError, PcrSelection, PcrValues
from stockade.evidence.policy_digest import (
    TPM_CC_DUPLICATE,
    TPM_CC_UNSEAL,
    policy_command_code,
    policy_pcr,
    unseal_policy,
)

SHA1, SHA256 = 0x0004, 0x000B


def reference_policy_pcr(
    previous: bytes, banks: list[tuple[int, list[int]]], values: dict[tuple[int, int], bytes]
) -> bytes:
    """policyDigest' = SHA256(policyDigest || 0x0000017F || TPML_PCR_SELECTION
    || SHA256(PCR values in selection order)), the TPML built byte by byte."""
    tpml = struct.pack(">I", len(banks))
    for alg, indices in banks:
        bitmap = bytearray(3)
        for index in indices:
            bitmap[index // 8] |= 1 << (index % 8)
        tpml += struct.pack(">HB", alg, 3) + bytes(bitmap)
    concatenated = b"".join(values[alg, i] for alg, indices in banks for i in sorted(indices))
    pcr_digest = hashlib.sha256(concatenated).digest()
    return hashlib.sha256(previous + bytes.fromhex("0000017f") + tpml + pcr_digest).digest()


def reference_policy_command_code(previous: bytes, code: int) -> bytes:
    return hashlib.sha256(previous + bytes.fromhex("0000016c") + struct.pack(">I", code)).digest()


def flat(values: PcrValues) -> dict[tuple[int, int], bytes]:
    return {(alg, i): v for alg, bank in values.banks.items() for i, v in bank.items()}


@pytest.mark.parametrize(
    ("text", "banks"),
    [
        ("sha256:0", [(SHA256, [0])]),
        ("sha256:0,1,2,3,7,12", [(SHA256, [0, 1, 2, 3, 7, 12])]),
        ("sha256:23,4,16", [(SHA256, [4, 16, 23])]),
        ("sha1:0,7+sha256:4,23", [(SHA1, [0, 7]), (SHA256, [4, 23])]),
        ("sha256:4,23+sha1:0,7", [(SHA256, [4, 23]), (SHA1, [0, 7])]),
    ],
)
def test_policy_pcr_matches_the_specification(text, banks, pcr_values):
    selection = PcrSelection.parse(text)
    assert policy_pcr(selection, pcr_values) == reference_policy_pcr(
        bytes(32), banks, flat(pcr_values)
    )
    chained = hashlib.sha256(b"an earlier assertion").digest()
    assert policy_pcr(selection, pcr_values, chained) == reference_policy_pcr(
        chained, banks, flat(pcr_values)
    )


def test_known_answer_for_pcr0_all_zero():
    """Worked by hand: PCR 0 = 32 zero bytes, selection sha256:0, empty starting digest."""
    selection = PcrSelection.parse("sha256:0")
    zero = PcrValues({SHA256: {0: bytes(32)}})
    tpml = bytes.fromhex("00000001000b03010000")
    expected = hashlib.sha256(
        bytes(32) + bytes.fromhex("0000017f") + tpml + hashlib.sha256(bytes(32)).digest()
    ).digest()
    assert policy_pcr(selection, zero) == expected


def test_policy_command_code_matches_the_specification():
    for code in (TPM_CC_UNSEAL, TPM_CC_DUPLICATE, 0x20000001):
        for previous in (bytes(32), hashlib.sha256(b"x").digest()):
            assert policy_command_code(code, previous) == reference_policy_command_code(
                previous, code
            )


def test_unseal_policy_is_pcr_then_command_code(pcr_values):
    selection = PcrSelection.parse("sha256:0,1,2,3,7,12")
    after_pcr = policy_pcr(selection, pcr_values)
    assert unseal_policy(selection, pcr_values) == policy_command_code(TPM_CC_UNSEAL, after_pcr)
    # the Duplicate role would need a different digest: the sealed object never leaves
    assert unseal_policy(selection, pcr_values) != policy_command_code(TPM_CC_DUPLICATE, after_pcr)
    # order matters: CommandCode then PCR is another policy
    assert unseal_policy(selection, pcr_values) != policy_pcr(
        selection, pcr_values, policy_command_code(TPM_CC_UNSEAL, bytes(32))
    )


def test_every_selected_pcr_value_changes_the_digest(pcr_values):
    selection = PcrSelection.parse("sha1:0,7+sha256:0,1,2,3,7,12")
    baseline = unseal_policy(selection, pcr_values)
    seen = {baseline}
    for alg, index in selection.items():
        banks = {a: dict(bank) for a, bank in pcr_values.banks.items()}
        banks[alg][index] = bytes(len(banks[alg][index]))
        changed = unseal_policy(selection, PcrValues(banks))
        assert changed not in seen
        seen.add(changed)


def test_pcrs_outside_the_selection_do_not_matter(pcr_values):
    selection = PcrSelection.parse("sha256:0,1,2")
    banks = {a: dict(bank) for a, bank in pcr_values.banks.items()}
    banks[SHA256][16] = bytes(32)
    banks[SHA1][0] = bytes(20)
    assert unseal_policy(selection, PcrValues(banks)) == unseal_policy(selection, pcr_values)


def test_the_selection_bitmap_size_is_part_of_the_digest(pcr_values):
    """A TPM hashes the TPML_PCR_SELECTION as sent: sizeofSelect 4 is another policy."""
    selection = PcrSelection.parse("sha256:0")
    wide = PcrSelection((replace(selection.banks[0], size_of_select=4),))
    assert policy_pcr(selection, pcr_values) != policy_pcr(wide, pcr_values)


def test_missing_pcr_values_are_an_evidence_error(pcr_values):
    selection = PcrSelection.parse("sha256:0,1")
    with pytest.raises(EvidenceError, match="sha256:1"):
        policy_pcr(selection, PcrValues({SHA256: {0: bytes(32)}}))


@pytest.mark.parametrize("previous", [b"", bytes(20), bytes(33)])
def test_previous_digest_must_be_one_sha256_digest(previous, pcr_values):
    with pytest.raises(EvidenceError, match="32 bytes"):
        policy_pcr(PcrSelection.parse("sha256:0"), pcr_values, previous)
    with pytest.raises(EvidenceError, match="32 bytes"):
        policy_command_code(TPM_CC_UNSEAL, previous)


@pytest.mark.parametrize("code", [-1, 1 << 32])
def test_command_code_must_fit_32_bits(code):
    with pytest.raises(EvidenceError, match="32-bit"):
        policy_command_code(code, bytes(32))
