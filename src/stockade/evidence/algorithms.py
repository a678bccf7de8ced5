"""TPM algorithm identifiers and their counterparts in ``cryptography``.

Values from the TCG Algorithm Registry and TPM 2.0 Library Part 2, 6.3 (TPM_ALG_ID)
and 6.4 (TPM_ECC_CURVE).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.evidence.errors import UnsupportedAlgorithm


class Alg(IntEnum):
    """TPM_ALG_ID values Stockade understands."""

    RSA = 0x0001
    SHA1 = 0x0004
    HMAC = 0x0005
    AES = 0x0006
    KEYEDHASH = 0x0008
    XOR = 0x000A
    SHA256 = 0x000B
    SHA384 = 0x000C
    SHA512 = 0x000D
    NULL = 0x0010
    SM3_256 = 0x0012
    RSASSA = 0x0014
    RSAES = 0x0015
    RSAPSS = 0x0016
    OAEP = 0x0017
    ECDSA = 0x0018
    ECDH = 0x0019
    ECDAA = 0x001A
    SM2 = 0x001B
    ECSCHNORR = 0x001C
    KDF1_SP800_56A = 0x0020
    KDF1_SP800_108 = 0x0022
    ECC = 0x0023
    SYMCIPHER = 0x0025
    SHA3_256 = 0x0027
    SHA3_384 = 0x0028
    SHA3_512 = 0x0029
    CTR = 0x0040
    OFB = 0x0041
    CBC = 0x0042
    CFB = 0x0043
    ECB = 0x0044


class EccCurve(IntEnum):
    """TPM_ECC_CURVE values."""

    NIST_P192 = 0x0001
    NIST_P224 = 0x0002
    NIST_P256 = 0x0003
    NIST_P384 = 0x0004
    NIST_P521 = 0x0005


@dataclass(frozen=True)
class HashAlgorithm:
    alg: Alg
    name: str
    digest_size: int

    def new(self) -> hashes.HashAlgorithm:
        return _HASH_FACTORIES[self.alg]()

    @property
    def constructor(self) -> Callable[[bytes], Any]:
        """hashlib's constructor, for hot loops: ``constructor(data).digest()``."""
        return _HASHLIB[self.alg]

    def digest(self, data: bytes) -> bytes:
        # hashlib (OpenSSL underneath, like cryptography) costs a tenth as much
        # per call, which matters when replaying logs of hundreds of events.
        return _HASHLIB[self.alg](data).digest()


_HASH_FACTORIES: dict[Alg, type[hashes.HashAlgorithm]] = {
    Alg.SHA1: hashes.SHA1,
    Alg.SHA256: hashes.SHA256,
    Alg.SHA384: hashes.SHA384,
    Alg.SHA512: hashes.SHA512,
    Alg.SHA3_256: hashes.SHA3_256,
    Alg.SHA3_384: hashes.SHA3_384,
    Alg.SHA3_512: hashes.SHA3_512,
}

_HASHLIB = {
    Alg.SHA1: hashlib.sha1,
    Alg.SHA256: hashlib.sha256,
    Alg.SHA384: hashlib.sha384,
    Alg.SHA512: hashlib.sha512,
    Alg.SHA3_256: hashlib.sha3_256,
    Alg.SHA3_384: hashlib.sha3_384,
    Alg.SHA3_512: hashlib.sha3_512,
}

HASHES: dict[int, HashAlgorithm] = {
    alg: HashAlgorithm(alg, name, size)
    for alg, name, size in (
        (Alg.SHA1, "sha1", 20),
        (Alg.SHA256, "sha256", 32),
        (Alg.SHA384, "sha384", 48),
        (Alg.SHA512, "sha512", 64),
        (Alg.SHA3_256, "sha3_256", 32),
        (Alg.SHA3_384, "sha3_384", 48),
        (Alg.SHA3_512, "sha3_512", 64),
    )
}
HASHES_BY_NAME: dict[str, HashAlgorithm] = {h.name: h for h in HASHES.values()}

# Digest sizes of banks we can carry but not compute (e.g. SM3 in event logs).
DIGEST_SIZES: dict[int, int] = {alg: h.digest_size for alg, h in HASHES.items()} | {Alg.SM3_256: 32}

CURVES: dict[int, ec.EllipticCurve] = {
    EccCurve.NIST_P192: ec.SECP192R1(),
    EccCurve.NIST_P224: ec.SECP224R1(),
    EccCurve.NIST_P256: ec.SECP256R1(),
    EccCurve.NIST_P384: ec.SECP384R1(),
    EccCurve.NIST_P521: ec.SECP521R1(),
}
CURVE_IDS: dict[str, EccCurve] = {
    curve.name: EccCurve(curve_id) for curve_id, curve in CURVES.items()
}


def hash_algorithm(alg_id: int) -> HashAlgorithm:
    """The hash for a TPM_ALG_ID, or ``UnsupportedAlgorithm``."""
    try:
        return HASHES[alg_id]
    except KeyError:
        raise UnsupportedAlgorithm("hash", alg_id) from None


def hash_by_name(name: str) -> HashAlgorithm:
    """The hash for a bank name such as ``sha256``."""
    try:
        return HASHES_BY_NAME[name.lower()]
    except KeyError:
        raise UnsupportedAlgorithm("hash", name) from None


def curve(curve_id: int) -> ec.EllipticCurve:
    try:
        return CURVES[curve_id]
    except KeyError:
        raise UnsupportedAlgorithm("ECC curve", curve_id) from None


def curve_size(curve_id: int) -> int:
    """Bytes per coordinate of a curve."""
    return (curve(curve_id).key_size + 7) // 8
