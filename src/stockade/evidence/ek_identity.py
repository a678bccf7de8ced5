"""A node's identity: its endorsement key, in one canonical form.

A TPM's EK public area can be written many ways for one key (another authPolicy, the RSA
exponent spelt out instead of 0, other attributes): hashing the bytes a node sends would let
one TPM appear as many nodes and walk out of a revocation. The identity is therefore the
sha256 of the key's DER SubjectPublicKeyInfo (RFC 5280, 4.1.2.7), the form its EK certificate
certifies, and the public area must be exactly one of the TCG default EK templates with that
key filled in (TCG EK Credential Profile for TPM Family 2.0, 2.2.1.4 "Low Range" and B.4
"High Range" templates L-1, L-2, H-1 to H-4, H-6 and H-7; H-5, SM2 with SM3, is not supported,
and EKs a manufacturer made from a template of its own in NV are refused).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from stockade.evidence.algorithms import Alg, EccCurve
from stockade.evidence.errors import EvidenceError
from stockade.evidence.public import (
    EccParameters,
    EccPoint,
    ObjectAttributes,
    RsaParameters,
    SymmetricDefinition,
    TpmPublic,
)


class EkTemplateInvalid(EvidenceError):
    """The EK public area is not a TCG default EK template: it is not what a TPM's EK is."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"EK public area is not a TCG EK template: {detail}")
        self.detail = detail


_LOW = (
    ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.SENSITIVE_DATA_ORIGIN
    | ObjectAttributes.ADMIN_WITH_POLICY
    | ObjectAttributes.RESTRICTED
    | ObjectAttributes.DECRYPT
)
_HIGH = _LOW | ObjectAttributes.USER_WITH_AUTH

# PolicyA (low range) and PolicyB per name algorithm (high range): EK Credential Profile,
# B.6 "Policies": PolicySecret(TPM_RH_ENDORSEMENT) or PolicyOR of it with PolicyNV.
_POLICY_A_SHA256 = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
_POLICY_B_SHA256 = bytes.fromhex("ca3d0a99a2b93906f7a3342414efcfb3a385d44cd1fd459089d19b5071c0b7a0")
_POLICY_B_SHA384 = bytes.fromhex(
    "b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4"
    "cb1c0ad9bde419cacb47ba09699646150f9fc000f3f80e12"
)
_POLICY_B_SHA512 = bytes.fromhex(
    "b8221ca69e8550a4914de3faa6a18c072cc01208073a928d5d66d59ef79e49a4"
    "29c41a6b269571d57edb25fbdb1838425608b413cd616a5f6db5b6071af99bea"
)

_AES128_CFB = SymmetricDefinition(Alg.AES, 128, Alg.CFB)
_AES256_CFB = SymmetricDefinition(Alg.AES, 256, Alg.CFB)


@dataclass(frozen=True)
class EkTemplate:
    """One TCG EK template: everything of the public area but the key itself."""

    name: str
    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    symmetric: SymmetricDefinition
    key_bits: int = 0  # RSA
    curve: int = 0  # ECC

    def matches(self, public: TpmPublic) -> list[str]:
        """The fields of ``public`` that differ from this template (empty: it is one)."""
        differences = []
        if public.type != self.type:
            return [f"type 0x{public.type:04x}"]
        if public.name_alg != self.name_alg:
            differences.append(f"nameAlg 0x{public.name_alg:04x}")
        if public.attributes != self.attributes:
            differences.append(f"objectAttributes 0x{public.attributes:08x}")
        if public.auth_policy != self.auth_policy:
            differences.append(f"authPolicy {public.auth_policy.hex() or '(empty)'}")
        parameters = public.parameters
        if not isinstance(parameters, RsaParameters | EccParameters):
            return [*differences, "parameters"]
        if parameters.symmetric != self.symmetric:
            differences.append("symmetric")
        if parameters.scheme.scheme != Alg.NULL:
            differences.append("scheme")
        if isinstance(parameters, RsaParameters):
            if parameters.key_bits != self.key_bits:
                differences.append(f"keyBits {parameters.key_bits}")
            if parameters.exponent != 0:
                differences.append(f"exponent {parameters.exponent} (the template says 0)")
            if not isinstance(public.unique, bytes) or len(public.unique) * 8 != self.key_bits:
                differences.append("unique (modulus length)")
        else:
            if parameters.curve_id != self.curve:
                differences.append(f"curveID 0x{parameters.curve_id:04x}")
            if parameters.kdf.scheme != Alg.NULL:
                differences.append("kdf")
            if not isinstance(public.unique, EccPoint):
                differences.append("unique")
        return differences


TEMPLATES: tuple[EkTemplate, ...] = (
    EkTemplate("L-1", Alg.RSA, Alg.SHA256, int(_LOW), _POLICY_A_SHA256, _AES128_CFB, key_bits=2048),
    EkTemplate(
        "L-2",
        Alg.ECC,
        Alg.SHA256,
        int(_LOW),
        _POLICY_A_SHA256,
        _AES128_CFB,
        curve=EccCurve.NIST_P256,
    ),
    EkTemplate(
        "H-1", Alg.RSA, Alg.SHA256, int(_HIGH), _POLICY_B_SHA256, _AES128_CFB, key_bits=2048
    ),
    EkTemplate(
        "H-2",
        Alg.ECC,
        Alg.SHA256,
        int(_HIGH),
        _POLICY_B_SHA256,
        _AES128_CFB,
        curve=EccCurve.NIST_P256,
    ),
    EkTemplate(
        "H-3",
        Alg.ECC,
        Alg.SHA384,
        int(_HIGH),
        _POLICY_B_SHA384,
        _AES256_CFB,
        curve=EccCurve.NIST_P384,
    ),
    EkTemplate(
        "H-4",
        Alg.ECC,
        Alg.SHA512,
        int(_HIGH),
        _POLICY_B_SHA512,
        _AES256_CFB,
        curve=EccCurve.NIST_P521,
    ),
    EkTemplate(
        "H-6", Alg.RSA, Alg.SHA384, int(_HIGH), _POLICY_B_SHA384, _AES256_CFB, key_bits=3072
    ),
    EkTemplate(
        "H-7", Alg.RSA, Alg.SHA384, int(_HIGH), _POLICY_B_SHA384, _AES256_CFB, key_bits=4096
    ),
)


def check_ek_template(public: TpmPublic) -> EkTemplate:
    """The TCG template ``public`` is, or ``EkTemplateInvalid`` naming what differs from the
    closest template of its type."""
    closest: tuple[EkTemplate, list[str]] | None = None
    for template in TEMPLATES:
        differences = template.matches(public)
        if not differences:
            return template
        if template.type == public.type and (closest is None or len(differences) < len(closest[1])):
            closest = (template, differences)
    if closest is None:
        raise EkTemplateInvalid(f"object type 0x{public.type:04x} is neither RSA nor ECC")
    template, differences = closest
    raise EkTemplateInvalid(f"differs from {template.name} in {', '.join(differences)}")


def ek_identity(public: TpmPublic) -> str:
    """sha256 (hex) of the EK's DER SubjectPublicKeyInfo: the node's identity."""
    spki = public.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()
