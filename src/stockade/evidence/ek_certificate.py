"""EK certificate validation: the certificate chains to a trusted TPM vendor CA and
certifies exactly the EK the TPM presents (TCG EK Credential Profile 2.0, 3).

Path building is by issuer name and signature, through the supplied
intermediates, to one of the trusted roots; every certificate must be valid at
``now``, every issuer must be a CA allowed to sign certificates, and no CA's
pathLenConstraint may be exceeded (RFC 5280 6.1.4 (k)-(n)).

RFC 5280 4.2: a certificate-using system MUST reject a certificate with a critical
extension it does not recognise. The leaf and every intermediate are held to that
(the trust anchor is configuration, not part of the path: 6.1.1 (d)). Recognised,
and how each is processed:

- basicConstraints (2.5.29.19): cA set on every issuer, unset on the leaf;
  pathLenConstraint on every CA, the trust anchor's included.
- keyUsage (2.5.29.15): keyCertSign on every issuer; keyEncipherment (RSA EK) or
  keyAgreement (ECC EK) on the leaf, what receiving a credential needs
  (EK Credential Profile 2.0, 3.2).
- extendedKeyUsage (2.5.29.37), leaf only: tcg-kp-EKCertificate or
  anyExtendedKeyUsage. On a CA it is not processed, so a critical one is refused.
- subjectAltName (2.5.29.17): decoded. An EK certificate with an empty subject
  names the TPM's manufacturer, model and version here, marked critical
  (EK Credential Profile 2.0, 3.2.9). Stockade identifies the EK by its key, not by
  names, and processes no name constraints: nameConstraints is not recognised.
- certificatePolicies (2.5.29.32): decoded. Stockade's initial policy set is
  anyPolicy and no explicit policy is required, so with policyConstraints,
  policyMappings and inhibitAnyPolicy not recognised, policies cannot make a path
  invalid (6.1.5): there is nothing further to check. Some vendors mark it critical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm as CryptographyUnsupported
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, ObjectIdentifier

from stockade.evidence.errors import EkCertificateInvalid, EvidenceError
from stockade.evidence.public import TpmPublic, public_key_matches

MAX_CHAIN_LENGTH = 8
# What cryptography raises for a certificate it cannot decode (it parses extensions and keys
# lazily): a chain holding one is undecodable, never trusted.
UNDECODABLE = (
    ValueError,
    CryptographyUnsupported,
    x509.DuplicateExtension,  # RFC 5280 4.2: at most one instance of each extension
    x509.UnsupportedGeneralNameType,
)
TCG_KP_EK_CERTIFICATE = ObjectIdentifier("2.23.133.8.1")
# The critical extensions this validator processes (see the module docstring).
RECOGNISED_ON_CA: frozenset[ObjectIdentifier] = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.CERTIFICATE_POLICIES,
    }
)
RECOGNISED_ON_LEAF: frozenset[ObjectIdentifier] = RECOGNISED_ON_CA | {
    ExtensionOID.EXTENDED_KEY_USAGE
}


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


def _check_critical_extensions(
    cert: x509.Certificate, recognised: frozenset[ObjectIdentifier], role: str
) -> None:
    for extension in cert.extensions:
        if extension.critical and extension.oid not in recognised:
            raise EkCertificateInvalid(
                "critical-extension",
                f"{role} {_describe(cert)} carries critical extension "
                f"{extension.oid.dotted_string}, which Stockade does not process "
                "(RFC 5280 4.2: such a certificate must be rejected)",
            )


def _self_issued(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def _check_can_issue(cert: x509.Certificate, below: Sequence[x509.Certificate]) -> None:
    """``cert`` may issue the path's certificates under it: ``below`` are the
    intermediates between it and the leaf (the leaf itself excluded)."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise EkCertificateInvalid("chain", f"issuer {_describe(cert)} is not a CA") from None
    if not constraints.ca:
        raise EkCertificateInvalid("chain", f"issuer {_describe(cert)} is not a CA")
    limit = constraints.path_length
    if limit is not None:
        # RFC 5280 6.1.4 (l), (m): self-issued certificates (key rollover) do not count.
        count = sum(1 for intermediate in below if not _self_issued(intermediate))
        if count > limit:
            raise EkCertificateInvalid(
                "path-length",
                f"issuer {_describe(cert)} has pathLenConstraint {limit}, but the path has "
                f"{count} intermediate CA certificate(s) below it",
            )
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
    _check_critical_extensions(cert, RECOGNISED_ON_LEAF, "EK certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        if constraints.ca:
            raise EkCertificateInvalid("leaf", f"{_describe(cert)} is a CA, not an EK certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not (usage.key_encipherment or usage.key_agreement):
            raise EkCertificateInvalid(
                "leaf",
                f"{_describe(cert)} key usage allows neither keyEncipherment nor keyAgreement, "
                "so it does not certify a key for receiving credentials",
            )
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
    except UNDECODABLE as error:
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
    chain = build_path(leaf, trusted_roots, intermediates, now, anchor="TPM vendor CA")
    return ValidatedEk(ek_public, leaf, chain)


def build_path(
    leaf: x509.Certificate,
    trusted_roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    now: datetime,
    *,
    anchor: str,
) -> tuple[x509.Certificate, ...]:
    """The issuers from ``leaf`` up to one of ``trusted_roots`` (RFC 5280 6.1, at most
    ``MAX_CHAIN_LENGTH``): each may issue (basic constraints, key usage, path length), is
    valid at ``now`` and, among ``intermediates``, marks no extension critical that is not
    understood. ``EkCertificateInvalid`` (check ``chain``) names the ``anchor`` it missed."""
    chain: list[x509.Certificate] = []
    current = leaf
    for _ in range(MAX_CHAIN_LENGTH):
        root = next((r for r in trusted_roots if _issued_by(current, r)), None)
        if root is not None:
            _check_can_issue(root, chain)
            _check_validity(root, now)
            chain.append(root)
            return tuple(chain)
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
                f"chain to a trusted {anchor}",
            )
        _check_critical_extensions(issuer, RECOGNISED_ON_CA, "issuer")
        _check_can_issue(issuer, chain)
        _check_validity(issuer, now)
        chain.append(issuer)
        current = issuer
    raise EkCertificateInvalid(
        "chain", f"no trusted {anchor} within {MAX_CHAIN_LENGTH} certificates"
    )
