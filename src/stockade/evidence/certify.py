"""Verify a TPM2_Certify (TPM 2.0 Part 3, 18.2) without a TPM: a key lives in the AK's TPM.

TPM2_Certify makes the TPM sign, with an attestation key, a TPMS_ATTEST whose
body is TPMS_CERTIFY_INFO (Part 2, 10.12.3): the Name of a loaded object. The
Name is nameAlg || H(TPMT_PUBLIC), so a verifier holding the public area can
tell exactly which key the TPM vouched for, and the AK (itself proven resident
by credential activation at enrollment) tells which TPM holds it.

The checks, in order, each with its own ``CertifyRejected.check`` name:
``attestation-key`` (a restricted signing key, as for quotes), ``signature``
(the AK's, over the exact TPMS_ATTEST bytes; the schemes quotes accept, no
SHA-1), ``magic``, ``type``, ``nonce`` (extraData, constant-time), ``name``
(the certified Name is the offered key's), then ``node-key`` (the key is fit to
be a TLS key: ``check_node_key``). Only signed bytes are ever decoded.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from stockade.evidence.algorithms import Alg, EccCurve
from stockade.evidence.attest import (
    TPM_GENERATED_VALUE,
    Attest,
    AttestType,
    CertifyInfo,
    ClockInfo,
)
from stockade.evidence.errors import EvidenceError, EvidenceInvalid, QuoteInvalid
from stockade.evidence.public import (
    EccParameters,
    ObjectAttributes,
    RsaParameters,
    TpmPublic,
)
from stockade.evidence.quote import ACCEPTED_SIGNATURE_HASHES, verify_ak_signature
from stockade.evidence.signature import Signature


class CertifyRejected(EvidenceInvalid):
    """A TPM2_Certify or the key it certifies failed a check; ``check`` names which."""


# A TLS key must be born in the TPM and never leave it, and be usable with a
# password (empty) so tpm2-openssl can sign with it.
NODE_KEY_REQUIRED = (
    ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.SENSITIVE_DATA_ORIGIN
    | ObjectAttributes.USER_WITH_AUTH
    | ObjectAttributes.SIGN_ENCRYPT
)
# restricted: it would be an attestation key (it signs only TPM-made digests; a
# TLS handshake hash is not one). decrypt: one key, one purpose.
NODE_KEY_FORBIDDEN = ObjectAttributes.RESTRICTED | ObjectAttributes.DECRYPT

NODE_KEY_NAME_ALGS = frozenset({Alg.SHA256, Alg.SHA384, Alg.SHA512})
NODE_KEY_ECC_CURVES = frozenset({EccCurve.NIST_P256})
NODE_KEY_MIN_RSA_BITS = 2048
_NODE_KEY_SCHEMES = {
    Alg.ECC: frozenset({Alg.NULL, Alg.ECDSA}),
    Alg.RSA: frozenset({Alg.NULL, Alg.RSASSA, Alg.RSAPSS}),
}

_ATTRIBUTE_NAMES = {
    ObjectAttributes.FIXED_TPM: "fixedTPM",
    ObjectAttributes.FIXED_PARENT: "fixedParent",
    ObjectAttributes.SENSITIVE_DATA_ORIGIN: "sensitiveDataOrigin",
    ObjectAttributes.USER_WITH_AUTH: "userWithAuth",
    ObjectAttributes.SIGN_ENCRYPT: "sign",
    ObjectAttributes.RESTRICTED: "restricted",
    ObjectAttributes.DECRYPT: "decrypt",
}


@dataclass(frozen=True)
class CertifiedKey:
    """A key a TPM certified: its public area and Name, and the TPM's clock when it did."""

    public: TpmPublic
    name: bytes
    clock: ClockInfo
    firmware_version: int


def _attribute_names(flags: ObjectAttributes) -> str:
    return ", ".join(name for flag, name in _ATTRIBUTE_NAMES.items() if flags & flag)


def check_node_key(public: TpmPublic) -> None:
    """Raise ``CertifyRejected`` unless ``public`` is a TPM-resident signing key fit for TLS.

    Required: fixedTPM, fixedParent, sensitiveDataOrigin, userWithAuth, sign;
    forbidden: restricted, decrypt; ECC P-256 or RSA of at least 2048 bits; a
    nameAlg of SHA-256 or stronger; if the key fixes a signing scheme, ECDSA or
    RSASSA/RSAPSS with SHA-256 or stronger.
    """
    if public.name_alg not in NODE_KEY_NAME_ALGS:
        raise CertifyRejected(
            "node-key", f"nameAlg 0x{public.name_alg:04x} is weaker than SHA-256 or unknown"
        )
    missing = ObjectAttributes(NODE_KEY_REQUIRED & ~public.attributes)
    if missing:
        raise CertifyRejected("node-key", f"key lacks TPMA_OBJECT {_attribute_names(missing)}")
    present = ObjectAttributes(NODE_KEY_FORBIDDEN & public.attributes)
    if present:
        raise CertifyRejected(
            "node-key",
            f"key has TPMA_OBJECT {_attribute_names(present)}, which a TLS key must not have",
        )
    parameters = public.parameters
    if isinstance(parameters, EccParameters):
        if parameters.curve_id not in NODE_KEY_ECC_CURVES:
            raise CertifyRejected(
                "node-key", f"ECC curve 0x{parameters.curve_id:04x} is not NIST P-256"
            )
    elif isinstance(parameters, RsaParameters):
        if parameters.key_bits < NODE_KEY_MIN_RSA_BITS:
            raise CertifyRejected(
                "node-key", f"RSA key of {parameters.key_bits} bits; at least 2048 are required"
            )
    else:
        raise CertifyRejected("node-key", f"object type 0x{public.type:04x} is not ECC or RSA")
    scheme = parameters.scheme
    if scheme.scheme not in _NODE_KEY_SCHEMES[Alg(public.type)]:
        raise CertifyRejected(
            "node-key", f"signing scheme 0x{scheme.scheme:04x} cannot sign a TLS handshake"
        )
    if scheme.scheme != Alg.NULL and scheme.hash_alg not in ACCEPTED_SIGNATURE_HASHES:
        raise CertifyRejected(
            "node-key", f"signing scheme hash 0x{scheme.hash_alg or 0:04x} is weaker than SHA-256"
        )
    try:
        public.public_key()
    except EvidenceError as error:
        raise CertifyRejected("node-key", str(error)) from None


def _check_ak_signature(ak: TpmPublic, message: bytes, signature_bytes: bytes) -> None:
    """The AK is a restricted signing key and signed ``message``, with a scheme quotes accept."""
    try:
        signature = Signature.unmarshal(signature_bytes)
    except EvidenceError as error:
        raise CertifyRejected("signature", f"not a usable TPMT_SIGNATURE: {error}") from None
    try:
        verify_ak_signature(ak, message, signature)
    except QuoteInvalid as error:
        detail = error.detail.replace("the signature does not", "the certification does not")
        raise CertifyRejected(error.check, detail) from None
    except EvidenceError as error:
        raise CertifyRejected("attestation-key", str(error)) from None


def verify_certify(
    ak: TpmPublic,
    key_public: TpmPublic,
    certify_info: bytes,
    signature: bytes,
    nonce: bytes,
) -> CertifiedKey:
    """Verify that the TPM holding ``ak`` certified ``key_public`` over ``nonce``.

    ``certify_info`` is the TPMS_ATTEST exactly as TPM2_Certify returned it and
    ``signature`` the TPMT_SIGNATURE over it. Returns what was proven, or raises
    ``CertifyRejected`` naming the failed check.
    """
    if not nonce:
        raise CertifyRejected("nonce", "an empty nonce proves nothing about freshness")
    _check_ak_signature(ak, certify_info, signature)

    # Only signed bytes are decoded: nothing below reads unauthenticated input.
    try:
        attest = Attest.unmarshal(certify_info)
    except EvidenceError as error:
        raise CertifyRejected("certify-info", str(error)) from None
    if attest.magic != TPM_GENERATED_VALUE:
        raise CertifyRejected(
            "magic", f"0x{attest.magic:08x} is not TPM_GENERATED_VALUE; not made by a TPM"
        )
    if attest.type != AttestType.CERTIFY or not isinstance(attest.attested, CertifyInfo):
        raise CertifyRejected(
            "type", f"attestation type 0x{attest.type:04x} is not a certification (0x8017)"
        )
    if not hmac.compare_digest(attest.extra_data, nonce):
        raise CertifyRejected(
            "nonce",
            f"certification carries nonce {attest.extra_data.hex() or '(empty)'}, "
            f"expected {nonce.hex()}",
        )
    try:
        name = key_public.name()
    except EvidenceError as error:
        raise CertifyRejected("name", f"the offered key has no Name: {error}") from None
    if not hmac.compare_digest(attest.attested.name, name):
        raise CertifyRejected(
            "name",
            f"the TPM certified object {attest.attested.name.hex()}, "
            f"not the offered key {name.hex()}",
        )
    check_node_key(key_public)
    return CertifiedKey(key_public, name, attest.clock_info, attest.firmware_version)
