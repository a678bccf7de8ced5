"""AK certificate validation: a cloud vTPM's attestation key, certified by the cloud's CA.

Cloud vTPMs (GCE Shielded VMs) carry in NV an AK *template* and a certificate for the key
that template makes under the endorsement hierarchy, signed by the cloud's AK CA
(go-tpm-tools ``client/keys.go``: ``GceAKTemplateNVIndexRSA`` 0x01c10001 /
``GceAKCertNVIndexRSA`` 0x01c10000, ``GceAKTemplateNVIndexECC`` 0x01c10003 /
``GceAKCertNVIndexECC`` 0x01c10002). Such a certificate vouches directly that the key is an
AK of that vTPM, so no EK and no MakeCredential are needed; possession is proven by the AK
certifying the node's channel key over a fresh challenge (``stockade.evidence.certify``).

The checks, each with its own ``AkCertificateInvalid.check``:

- ``leaf``: not a CA; keyUsage present with digitalSignature (an AK signs); not an EK
  certificate (extendedKeyUsage tcg-kp-EKCertificate is refused); no critical extension
  Stockade does not process (RFC 5280 4.2).
- ``key``: the certificate's key is exactly the AK public area's key.
- ``attestation-key``: the AK public area is a restricted signing key that lives in the TPM
  (``stockade.evidence.quote.check_ak``): the certificate speaks for the key, the public
  area's attributes for what the key may sign.
- ``validity``, ``chain``, ``path-length``, ``critical-extension``: the path to one of the
  configured AK roots, as for EK certificates (``stockade.evidence.ek_certificate``). AK
  roots are separate from EK roots: a TPM vendor's EK CA never certifies an AK.

The node's identity is the sha256 of the certified SubjectPublicKeyInfo (``ak_identity``),
as for an EK. On GCE the certificate also names the instance (extension
1.3.6.1.4.1.11129.2.1.21, ``parse_gce_instance``), which is shown on the node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtensionOID, ObjectIdentifier

from stockade.evidence import ek_certificate as chain_rules
from stockade.evidence.errors import (
    AkCertificateInvalid,
    EkCertificateInvalid,
    EvidenceError,
    InstanceIdentityMalformed,
    QuoteInvalid,
)
from stockade.evidence.public import TpmPublic, public_key_matches
from stockade.evidence.quote import check_ak

# Google's cloudComputeInstanceIdentifier (go-tpm-tools server: the GCE AK certificate's
# instance information).
GCE_INSTANCE_OID = ObjectIdentifier("1.3.6.1.4.1.11129.2.1.21")
MAX_INSTANCE_EXTENSION = 4096
RECOGNISED_ON_LEAF: frozenset[ObjectIdentifier] = chain_rules.RECOGNISED_ON_LEAF | {
    GCE_INSTANCE_OID
}


@asn1.sequence
class _GceSecurityProperties:
    security_version: Annotated[int | None, asn1.Explicit(0)]
    is_production: Annotated[bool | None, asn1.Explicit(1)]


@asn1.sequence
class _GceInstanceInfo:
    zone: str
    project_number: int
    project_id: str
    instance_id: int
    instance_name: str
    security_properties: Annotated[_GceSecurityProperties | None, asn1.Explicit(0)]


@dataclass(frozen=True)
class GceInstance:
    """The GCE instance an AK certificate names."""

    zone: str
    project_id: str
    project_number: int
    instance_id: int
    instance_name: str
    security_version: int | None = None
    is_production: bool | None = None

    @property
    def key(self) -> str:
        """The instance, as one string: ids are unique across GCE, names are not."""
        return f"gce:{self.project_number}/{self.instance_id}"

    def to_json(self) -> dict[str, object]:
        return {
            "zone": self.zone,
            "project_id": self.project_id,
            "project_number": self.project_number,
            "instance_id": self.instance_id,
            "instance_name": self.instance_name,
            "security_version": self.security_version,
            "is_production": self.is_production,
        }


@dataclass(frozen=True)
class ValidatedAk:
    """An AK whose certificate checked out: the key, its identity and, on GCE, the instance."""

    public: TpmPublic
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # issuer of the leaf first, trusted root last
    identity: str
    instance: GceInstance | None


def parse_gce_instance(data: bytes) -> GceInstance:
    """Decode the DER of the GCE instance identity extension (a SEQUENCE of zone, project
    number, project id, instance id, instance name, and optional [0] security properties), or
    raise ``InstanceIdentityMalformed``. DER only: trailing bytes and other encodings are
    refused."""
    if len(data) > MAX_INSTANCE_EXTENSION:
        raise InstanceIdentityMalformed(f"{len(data)} bytes, more than {MAX_INSTANCE_EXTENSION}")
    try:
        info = asn1.decode_der(_GceInstanceInfo, data)
    except (ValueError, TypeError, OverflowError) as error:
        raise InstanceIdentityMalformed(f"not the expected DER SEQUENCE: {error}") from None
    for field, value in (("zone", info.zone), ("instance name", info.instance_name)):
        if not value:
            raise InstanceIdentityMalformed(f"empty {field}")
    if info.project_number < 0 or info.instance_id < 0:
        raise InstanceIdentityMalformed("negative project number or instance id")
    security = info.security_properties
    if (
        security is not None
        and security.security_version is None
        and security.is_production is None
    ):
        raise InstanceIdentityMalformed("empty security properties (DER omits them instead)")
    return GceInstance(
        zone=info.zone,
        project_id=info.project_id,
        project_number=info.project_number,
        instance_id=info.instance_id,
        instance_name=info.instance_name,
        security_version=None if security is None else security.security_version,
        is_production=None if security is None else security.is_production,
    )


def gce_instance(certificate: x509.Certificate) -> GceInstance | None:
    """The instance the certificate names, None without the extension."""
    try:
        extension = certificate.extensions.get_extension_for_oid(GCE_INSTANCE_OID)
    except x509.ExtensionNotFound:
        return None
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise InstanceIdentityMalformed("decoded by cryptography as another extension")
    return parse_gce_instance(value.value)


def encode_gce_instance(instance: GceInstance) -> bytes:
    """The extension's DER for ``instance`` (the development cloud CA writes it)."""
    security = (
        None
        if instance.security_version is None and instance.is_production is None
        else _GceSecurityProperties(
            security_version=instance.security_version, is_production=instance.is_production
        )
    )
    return asn1.encode_der(
        _GceInstanceInfo(
            zone=instance.zone,
            project_number=instance.project_number,
            project_id=instance.project_id,
            instance_id=instance.instance_id,
            instance_name=instance.instance_name,
            security_properties=security,
        )
    )


def ak_identity(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    """sha256 (hex) of the certified key's DER SubjectPublicKeyInfo: the node's identity."""
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def load_ak_certificate(data: bytes) -> x509.Certificate:
    """A DER or PEM certificate; NV padding after the DER is cut, as for EK certificates."""
    try:
        return chain_rules.load_certificate(data)
    except EvidenceError as error:
        raise EvidenceError(str(error).replace("EK certificate", "AK certificate")) from None


def validate_ak_certificate(
    certificate: bytes | x509.Certificate,
    ak_public: TpmPublic,
    *,
    trusted_roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate] = (),
    now: datetime,
) -> ValidatedAk:
    """Validate ``certificate`` for ``ak_public`` against the AK roots, or raise
    ``AkCertificateInvalid`` (a check failed) or ``EvidenceError`` (undecodable)."""
    try:
        return _validate(certificate, ak_public, trusted_roots, intermediates, now)
    except EkCertificateInvalid as error:  # the shared path rules name their check
        raise AkCertificateInvalid(error.check, error.detail) from None
    except chain_rules.UNDECODABLE as error:
        raise EvidenceError(f"AK certificate chain cannot be decoded: {error}") from None


def _check_leaf(cert: x509.Certificate) -> None:
    described = chain_rules._describe(cert)
    chain_rules._check_critical_extensions(cert, RECOGNISED_ON_LEAF, "AK certificate")
    try:
        if cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            raise AkCertificateInvalid("leaf", f"{described} is a CA, not an AK certificate")
    except x509.ExtensionNotFound:
        pass
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise AkCertificateInvalid(
            "leaf", f"{described} has no keyUsage; an AK certificate must allow digitalSignature"
        ) from None
    if not usage.digital_signature:
        raise AkCertificateInvalid(
            "leaf", f"{described} key usage lacks digitalSignature, so it certifies no AK"
        )
    try:
        usages = cert.extensions.get_extension_for_oid(ExtensionOID.EXTENDED_KEY_USAGE).value
    except x509.ExtensionNotFound:
        return
    if isinstance(usages, x509.ExtendedKeyUsage) and chain_rules.TCG_KP_EK_CERTIFICATE in usages:
        raise AkCertificateInvalid(
            "leaf", f"{described} is an EK certificate (tcg-kp-EKCertificate), not an AK's"
        )


def _validate(
    certificate: bytes | x509.Certificate,
    ak_public: TpmPublic,
    trusted_roots: Sequence[x509.Certificate],
    intermediates: Sequence[x509.Certificate],
    now: datetime,
) -> ValidatedAk:
    leaf = (
        certificate
        if isinstance(certificate, x509.Certificate)
        else load_ak_certificate(certificate)
    )
    if not trusted_roots:
        raise AkCertificateInvalid("chain", "no trusted AK CA is configured (--ak-ca)")
    _check_leaf(leaf)
    key = leaf.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise AkCertificateInvalid("key", f"AK certificate holds a {type(key).__name__}")
    try:
        matches = public_key_matches(ak_public, key)
    except EvidenceError as error:
        raise AkCertificateInvalid(
            "key", f"the AK public area holds no usable key: {error}"
        ) from None
    if not matches:
        raise AkCertificateInvalid(
            "key",
            f"{chain_rules._describe(leaf)} certifies a different key than the AK presented",
        )
    try:
        check_ak(ak_public)
    except QuoteInvalid as error:
        raise AkCertificateInvalid("attestation-key", error.detail) from None
    chain_rules._check_validity(leaf, now)
    chain = chain_rules.build_path(leaf, trusted_roots, intermediates, now, anchor="AK CA")
    # Decoded only once the CA's signature covers it.
    try:
        instance = gce_instance(leaf)
    except InstanceIdentityMalformed as error:
        raise AkCertificateInvalid("instance", str(error)) from None
    return ValidatedAk(ak_public, leaf, chain, ak_identity(key), instance)
