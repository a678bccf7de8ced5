"""Verify a TPM2_Quote (TPM 2.0 Part 3, 18.4) without a TPM.

The checks, in order, each with its own ``QuoteInvalid.check`` name:
``signature`` (over the exact TPMS_ATTEST bytes with the AK), ``magic``,
``type``, ``nonce`` (extraData), ``pcr-selection`` (what was asked for),
``pcr-digest`` (against the supplied PCR values), then ``clock`` continuity
against the previous quote from the same TPM.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from functools import cached_property

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from stockade.evidence.algorithms import Alg
from stockade.evidence.attest import TPM_GENERATED_VALUE, Attest, AttestType, ClockInfo, QuoteInfo
from stockade.evidence.clock import check_clock_progression
from stockade.evidence.errors import EvidenceError, QuoteInvalid
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.public import (
    EccParameters,
    ObjectAttributes,
    RsaParameters,
    TpmPublic,
)
from stockade.evidence.signature import Signature

# SHA-1 signatures are forgeable in practice; a quote is only as strong as its hash.
ACCEPTED_SIGNATURE_HASHES = frozenset({Alg.SHA256, Alg.SHA384, Alg.SHA512})

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class VerifiedQuote:
    """A quote that passed every check: its decoded body and the PCRs it vouches for."""

    attest: Attest
    selection: PcrSelection
    supplied_values: PcrValues

    @property
    def clock_info(self) -> ClockInfo:
        return self.attest.clock_info

    @cached_property
    def pcr_values(self) -> PcrValues:
        """Exactly the PCR values the TPM signed (the supplied ones may hold more)."""
        return self.supplied_values.restricted_to(self.selection)


_AK_REQUIRED = int(
    ObjectAttributes.RESTRICTED
    | ObjectAttributes.SIGN_ENCRYPT
    | ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.SENSITIVE_DATA_ORIGIN
)


def check_ak(ak: TpmPublic) -> None:
    """An attestation key must be a restricted signing key that lives in the TPM."""
    if ak.attributes & _AK_REQUIRED != _AK_REQUIRED:
        missing = [
            str(flag.name) for flag in ObjectAttributes if flag & _AK_REQUIRED and not ak.has(flag)
        ]
        raise QuoteInvalid("attestation-key", f"AK lacks attributes {', '.join(missing)}")
    if ak.attributes & ObjectAttributes.DECRYPT:
        raise QuoteInvalid("attestation-key", "AK is also a decryption key")


def _key_scheme(ak: TpmPublic) -> tuple[int, int | None]:
    if isinstance(ak.parameters, RsaParameters | EccParameters):
        return ak.parameters.scheme.scheme, ak.parameters.scheme.hash_alg
    raise QuoteInvalid("attestation-key", "AK is neither an RSA nor an ECC key")


def verify_ak_signature(ak: TpmPublic | PublicKey, message: bytes, signature: Signature) -> None:
    """``signature`` is the AK's over ``message`` with a scheme and hash we accept, or
    ``QuoteInvalid`` (check ``attestation-key`` or ``signature``). Shared by every TPM-signed
    attestation: quotes and certifications."""
    if isinstance(ak, TpmPublic):
        check_ak(ak)
        key = ak.public_key()
        scheme, scheme_hash = _key_scheme(ak)
        if scheme != Alg.NULL and (scheme, scheme_hash) != (signature.scheme, signature.hash.alg):
            raise QuoteInvalid(
                "signature",
                f"signed with scheme 0x{signature.scheme:04x}/{signature.hash.name} but the AK "
                f"is restricted to 0x{scheme:04x}/0x{scheme_hash or 0:04x}",
            )
    else:
        key = ak
    if signature.hash.alg not in ACCEPTED_SIGNATURE_HASHES:
        raise QuoteInvalid("signature", f"{signature.hash.name} signatures are not accepted")
    if not signature.verify(key, message):
        raise QuoteInvalid("signature", "the signature does not verify with the AK")


def verify_quote(
    ak: TpmPublic | PublicKey,
    message: bytes,
    signature: Signature,
    *,
    nonce: bytes,
    pcr_values: PcrValues,
    expected_selection: PcrSelection | None = None,
    previous_clock: ClockInfo | None = None,
    accept_bare_key: bool = False,
) -> VerifiedQuote:
    """Verify a quote and return what it proves, or raise ``QuoteInvalid``.

    ``ak`` is the AK's TPMT_PUBLIC (then its attributes and scheme are checked
    too). ``message`` is the TPMS_ATTEST exactly as signed. Malformed input raises
    ``EvidenceError``.

    A bare public key (``tpm2_createak -f pem``) cannot show that it is restricted: any
    unrestricted TPM key, or a software key, can sign a TPMS_ATTEST with the TPM's magic
    in it. It is refused (check ``attestation-key``) unless ``accept_bare_key``: the
    caller vouches, by other means, that the key is a restricted AK.
    """
    if not isinstance(ak, TpmPublic) and not accept_bare_key:
        raise QuoteInvalid(
            "attestation-key",
            "a bare public key cannot prove it is a restricted TPM AK (any unrestricted or "
            "software key can sign a TPMS_ATTEST): give the AK's TPM2B_PUBLIC "
            "(tpm2_createak -u), or accept the key explicitly",
        )
    if not nonce:
        raise QuoteInvalid("nonce", "an empty nonce proves nothing about freshness")
    verify_ak_signature(ak, message, signature)

    # Only signed bytes are decoded: nothing below reads unauthenticated input.
    attest = Attest.unmarshal(message)
    if attest.magic != TPM_GENERATED_VALUE:
        raise QuoteInvalid(
            "magic", f"0x{attest.magic:08x} is not TPM_GENERATED_VALUE; not made by a TPM"
        )
    if attest.type != AttestType.QUOTE or not isinstance(attest.attested, QuoteInfo):
        raise QuoteInvalid("type", f"attestation type 0x{attest.type:04x} is not a quote")
    if not hmac.compare_digest(attest.extra_data, nonce):
        raise QuoteInvalid(
            "nonce",
            f"quote carries nonce {attest.extra_data.hex() or '(empty)'}, expected {nonce.hex()}",
        )
    quoted = attest.attested.pcr_select
    if expected_selection is not None and not quoted.same_pcrs(expected_selection):
        raise QuoteInvalid("pcr-selection", f"quote covers {quoted}, expected {expected_selection}")
    try:
        digest = pcr_values.composite_digest(quoted, signature.hash)
    except EvidenceError as error:
        raise QuoteInvalid("pcr-digest", str(error)) from None
    if not hmac.compare_digest(digest, attest.attested.pcr_digest):
        raise QuoteInvalid(
            "pcr-digest",
            f"supplied values for {quoted} hash to {digest.hex()}, "
            f"the TPM signed {attest.attested.pcr_digest.hex()}",
        )
    if previous_clock is not None:
        check_clock_progression(previous_clock, attest.clock_info)
    return VerifiedQuote(attest, quoted, pcr_values)
