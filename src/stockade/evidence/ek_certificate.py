"""EK certificate validation: the certificate chains to a trusted TPM vendor CA and
certifies exactly the EK the TPM presents (TCG EK Credential Profile 2.0, 3).

Path building is by issuer name and signature, through the supplied
intermediates, to one of the trusted roots; every certificate must be valid at
``now``, and every issuer must be a CA allowed to sign certificates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm as CryptographyUnsupported
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ObjectIdentifier

from stockade.evidence.errors import EkCertificateInvalid, EvidenceError
from stockade.evidence.public import TpmPublic, public_key_matches

MAX_CHAIN_LENGTH = 8
TCG_KP_EK_CERTIFICATE = ObjectIdentifier("2.23.133.8.1")


@dataclass(frozen=True)
class ValidatedEk:
    """An EK whose certificate checked out, and the chain that vouches for it."""

    public: TpmPublic
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # issuer of the leaf first, trusted root last


def load_certificate(data: bytes) -> x509.Certificate:
    """A DER or PEM certificate; TPM NV often pads DER with trailing bytes, which are cut."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        if len(data) >= 4 and data[0] == 0x30 and data[1] == 0x82:
            data = data[: 4 + int.from_bytes(data[2:4], "big")]
        return x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion, CryptographyUnsupported) as error:
        raise EvidenceError(
            f"EK certificate is not a readable X.509 certificate: {error}"
        ) from None


def _describe(cert: x509.Certificate) -> str:
    subject = cert.subject.rfc4514_string() or "(empty subject)"
    return f"'{subject}' (serial {cert.serial_number:x})"


def _check_validity(cert: x509.Certificate, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise EkCertificateInvalid(
            "validity", f"{_describe(cert)} is not valid before {cert.not_valid_before_utc}"
        )
    if now > cert.not_valid_after_utc:
        raise EkCertificateInvalid(
            "validity", f"{_describe(cert)} expired at {cert.not_valid_after_utc}"
        )


def _check_can_issue(cert: x509.Certificate) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise EkCertificateInvalid("chain", f"issuer {_describe(cert)} is not a CA") from None
    if not constraints.ca:
        raise EkCertificateInvalid("chain", f"issuer {_describe(cert)} is not a CA")
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not usage.key_cert_sign:
        raise EkCertificateInvalid("chain", f"issuer {_describe(cert)} may not sign certificates")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _check_leaf(cert: x509.Certificate) -> None:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            raise EkCertificateInvalid("leaf", f"{_describe(cert)} is a CA, not an EK certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    if TCG_KP_EK_CERTIFICATE not in usages and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in (
        usages
    ):
        raise EkCertificateInvalid("leaf", f"{_describe(cert)} lacks tcg-kp-EKCertificate usage")


def validate_ek_certificate(
    certificate: bytes | x509.Certificate,
    ek_public: TpmPublic,
    *,
    trusted_roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    now: datetime,
) -> ValidatedEk:
    """Validate ``certificate`` for ``ek_public`` or raise ``EkCertificateInvalid``.

    A certificate that cannot be decoded (cryptography parses extensions and
    keys lazily) raises ``EvidenceError``: either way, the EK is not trusted.
    """
    try:
        return _validate(certificate, ek_public, trusted_roots, intermediates, now)
    except (ValueError, CryptographyUnsupported) as error:
        raise EvidenceError(f"EK certificate chain cannot be decoded: {error}") from None


def _validate(
    certificate: bytes | x509.Certificate,
    ek_public: TpmPublic,
    trusted_roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    now: datetime,
) -> ValidatedEk:
    leaf = (
        certificate if isinstance(certificate, x509.Certificate) else load_certificate(certificate)
    )
    if not trusted_roots:
        raise EkCertificateInvalid("chain", "no trusted TPM vendor CA is configured")
    _check_leaf(leaf)
    key = leaf.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise EkCertificateInvalid("key", f"EK certificate holds a {type(key).__name__}")
    if not public_key_matches(ek_public, key):
        raise EkCertificateInvalid(
            "key", f"{_describe(leaf)} certifies a different key than the TPM's EK"
        )
    _check_validity(leaf, now)

    chain: list[x509.Certificate] = []
    current = leaf
    for _ in range(MAX_CHAIN_LENGTH):
        root = next((r for r in trusted_roots if _issued_by(current, r)), None)
        if root is not None:
            _check_can_issue(root)
            _check_validity(root, now)
            chain.append(root)
            return ValidatedEk(ek_public, leaf, tuple(chain))
        issuer = next(
            (
                c
                for c in intermediates
                if c not in chain and c != current and _issued_by(current, c)
            ),
            None,
        )
        if issuer is None:
            raise EkCertificateInvalid(
                "chain",
                f"{_describe(current)} issued by '{current.issuer.rfc4514_string()}' does not "
                "chain to a trusted TPM vendor CA",
            )
        _check_can_issue(issuer)
        _check_validity(issuer, now)
        chain.append(issuer)
        current = issuer
    raise EkCertificateInvalid("chain", f"no trusted root within {MAX_CHAIN_LENGTH} certificates")
