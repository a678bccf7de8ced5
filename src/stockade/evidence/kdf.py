"""The TPM key derivation functions (TPM 2.0 Part 1, 11.4.10), built on
``cryptography``'s SP 800-108 and SP 800-56A implementations.

Labels are passed without their terminating NUL; both constructions insert
the 0x00 separator the TPM specification requires.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFHMAC, CounterLocation, Mode

from stockade.evidence.algorithms import HashAlgorithm
from stockade.evidence.errors import EvidenceError


def _bytes_for(bits: int) -> int:
    # TPM callers always ask for whole bytes; a partial byte would need masking.
    if bits <= 0 or bits % 8:
        raise EvidenceError(f"KDF output of {bits} bits is not a positive whole number of bytes")
    return bits // 8


def kdfa(
    hash_: HashAlgorithm,
    key: bytes,
    label: bytes,
    context_u: bytes,
    context_v: bytes,
    bits: int,
) -> bytes:
    """KDFa: SP 800-108 counter-mode HMAC over
    [i]32 || label || 00 || contextU || contextV || [bits]32."""
    return KBKDFHMAC(
        algorithm=hash_.new(),
        mode=Mode.CounterMode,
        length=_bytes_for(bits),
        rlen=4,
        llen=4,
        location=CounterLocation.BeforeFixed,
        label=label,
        context=context_u + context_v,
        fixed=None,
    ).derive(key)


def kdfe(
    hash_: HashAlgorithm,
    shared_x: bytes,
    label: bytes,
    party_u: bytes,
    party_v: bytes,
    bits: int,
) -> bytes:
    """KDFe: SP 800-56A concatenation KDF, H([i]32 || Z || label || 00 || partyU || partyV)."""
    return ConcatKDFHash(
        algorithm=hash_.new(),
        length=_bytes_for(bits),
        otherinfo=label + b"\x00" + party_u + party_v,
    ).derive(shared_x)
