"""Public-area templates for the keys Stockade asks a TPM to create."""

from __future__ import annotations

from enum import StrEnum

from stockade.evidence.algorithms import Alg, EccCurve
from stockade.evidence.public import (
    EccParameters,
    EccPoint,
    ObjectAttributes,
    RsaParameters,
    Scheme,
    SymmetricDefinition,
    TpmPublic,
)

# A restricted signing key: it signs only digests the TPM computed itself
# (quotes, certifications), never attacker-chosen data that mimics TPMS_ATTEST.
AK_ATTRIBUTES = (
    ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.SENSITIVE_DATA_ORIGIN
    | ObjectAttributes.USER_WITH_AUTH
    | ObjectAttributes.RESTRICTED
    | ObjectAttributes.SIGN_ENCRYPT
)


class KeyKind(StrEnum):
    RSA = "rsa"
    ECC = "ecc"


def ak_template(kind: KeyKind) -> TpmPublic:
    """RSA-2048 RSASSA-SHA256 or ECC P-256 ECDSA-SHA256 attestation key."""
    if kind is KeyKind.RSA:
        return TpmPublic(
            type=Alg.RSA,
            name_alg=Alg.SHA256,
            attributes=int(AK_ATTRIBUTES),
            auth_policy=b"",
            parameters=RsaParameters(
                SymmetricDefinition(), Scheme(Alg.RSASSA, Alg.SHA256), 2048, 0
            ),
            unique=b"",
        )
    return TpmPublic(
        type=Alg.ECC,
        name_alg=Alg.SHA256,
        attributes=int(AK_ATTRIBUTES),
        auth_policy=b"",
        parameters=EccParameters(
            SymmetricDefinition(),
            Scheme(Alg.ECDSA, Alg.SHA256),
            EccCurve.NIST_P256,
            Scheme(Alg.NULL),
        ),
        unique=EccPoint(b"", b""),
    )
