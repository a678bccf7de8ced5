"""KDFa and KDFe against the TPM 2.0 Part 1, 11.4.10 formulas, computed with hashlib/hmac.

The reference implementations (``kdfa_reference``, ``kdfe_reference`` in conftest.py) are
straight transcriptions of the specification; the code under test uses cryptography's
SP 800-108 / SP 800-56A KDFs.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.evidence.algorithms import Alg, hash_by_name
from stockade.evidence.kdf import kdfa, kdfe

HASH_ALGS = [Alg.SHA1, Alg.SHA256, Alg.SHA384, Alg.SHA512]
# one byte, less than a block, exactly a block (for SHA-256), several blocks, odd block counts
BITS = [8, 128, 256, 264, 512, 1000, 2048]
KEY = bytes.fromhex("a3" * 16 + "5c" * 16)


def hash_of(alg: int):
    return hash_by_name(Alg(alg).name.lower())


@pytest.mark.parametrize("alg", HASH_ALGS, ids=lambda a: Alg(a).name)
@pytest.mark.parametrize("bits", BITS)
def test_kdfa_matches_the_specification(spec, alg, bits):
    label, u, v = b"STORAGE", b"\x00\x0b" + bytes(range(32)), b"context V"
    out = kdfa(hash_of(alg), KEY, label, u, v, bits)
    assert len(out) == bits // 8
    assert out == spec.kdfa(alg, KEY, label, u, v, bits)


@pytest.mark.parametrize("alg", HASH_ALGS, ids=lambda a: Alg(a).name)
@pytest.mark.parametrize("bits", BITS)
def test_kdfe_matches_the_specification(spec, alg, bits):
    z, label, u, v = bytes(range(32)), b"IDENTITY", b"\x11" * 32, b"\x22" * 32
    out = kdfe(hash_of(alg), z, label, u, v, bits)
    assert len(out) == bits // 8
    assert out == spec.kdfe(alg, z, label, u, v, bits)


def test_kdfa_first_block_written_out():
    """One block of KDFa(SHA-256, key, "INTEGRITY", "", "", 256) with no helper at all."""
    expected = hmac.new(
        KEY, b"\x00\x00\x00\x01" + b"INTEGRITY\x00" + b"\x00\x00\x01\x00", "sha256"
    ).digest()
    assert kdfa(hash_of(Alg.SHA256), KEY, b"INTEGRITY", b"", b"", 256) == expected


def test_kdfe_first_block_written_out():
    z = bytes(range(32))
    expected = hashlib.sha256(struct.pack(">I", 1) + z + b"IDENTITY\x00" + b"U" + b"V").digest()
    assert kdfe(hash_of(Alg.SHA256), z, b"IDENTITY", b"U", b"V", 256) == expected


def test_kdfa_second_block_uses_counter_two_and_the_total_bit_count():
    out = kdfa(hash_of(Alg.SHA256), KEY, b"L", b"", b"", 512)
    second = hmac.new(KEY, struct.pack(">I", 2) + b"L\x00" + struct.pack(">I", 512), "sha256")
    assert out[32:] == second.digest()


def test_kdfa_output_depends_on_every_input():
    sha256 = hash_of(Alg.SHA256)
    base = kdfa(sha256, KEY, b"STORAGE", b"name", b"", 128)
    variants = [
        kdfa(sha256, KEY[:-1] + b"\x00", b"STORAGE", b"name", b"", 128),
        kdfa(sha256, KEY, b"STORAGF", b"name", b"", 128),
        kdfa(sha256, KEY, b"STORAGE", b"namf", b"", 128),
        kdfa(sha256, KEY, b"STORAGE", b"name", b"x", 128),
        kdfa(sha256, KEY, b"STORAGE", b"name", b"", 256)[:16],  # [bits] is hashed in
    ]
    assert all(variant != base for variant in variants)


@settings(max_examples=60)
@given(
    st.sampled_from(HASH_ALGS),
    st.binary(min_size=1, max_size=64),
    st.binary(max_size=16),
    st.binary(max_size=40),
    st.binary(max_size=40),
    st.integers(1, 96).map(lambda n: n * 8),
)
def test_kdfa_and_kdfe_match_for_any_input(spec, alg, key, label, u, v, bits):
    assert kdfa(hash_of(alg), key, label, u, v, bits) == spec.kdfa(alg, key, label, u, v, bits)
    assert kdfe(hash_of(alg), key, label, u, v, bits) == spec.kdfe(alg, key, label, u, v, bits)
