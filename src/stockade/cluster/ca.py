"""The cluster CA: short-lived node certificates for keys that live only in a node's TPM.

The verifier issues a node certificate only after TPM2_Certify, signed by the
node's attestation key, proved the key resident in that node's TPM
(``stockade.evidence.certify``), and only for as long as the node's latest
attestation result is valid: minutes, not years.

Files in the CA directory: ``ca-key.pem`` (ECDSA P-256, PKCS#8, mode 0600;
refused if group or others can read it) and ``ca.pem`` (self-signed, CA:TRUE,
pathlen 0, keyCertSign + cRLSign, ten years).

A node certificate names only its node, and only as a TLS client (the shape of a
kubelet client certificate): subject ``O=system:nodes, CN=system:node:<node
name>``, EKU clientAuth only, SAN ``URI:spiffe://stockade/node/<node id>`` only.
It has no serverAuth and no DNS or IP name: it can never serve TLS for a host name,
whatever the node is called (kubelet serving certificates go through the Kubernetes
CSR approver, ``stockade.kube.csr``). The name must pass
``stockade.cluster.names.validate_node_name`` (``InvalidNodeName`` otherwise). Two
non-critical private extensions carry Stockade's identifiers, each an ASN.1
UTF8String, under an OID arc derived from a UUID (ITU-T X.667 / RFC 4122 section 8:
``2.25.<the UUID as one integer>``), UUID ``302626ba-4d70-4e35-801a-50df30e0d726``:

- ``2.25.64001036570269566545444087952775894822.1`` — the node id;
- ``2.25.64001036570269566545444087952775894822.2`` — the attestation result id
  the certificate was issued on (its EAR's ``stockade.result-id``).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from stockade.certificates import key_usage
from stockade.cluster.names import KUBE_NODE_PREFIX, validate_node_name
from stockade.errors import StockadeError, VerificationFailed
from stockade.evidence.certify import check_node_key
from stockade.evidence.public import TpmPublic
from stockade.home import locked, write_atomic
from stockade.keyfiles import load_private_key, write_private_key

STOCKADE_OID_ARC = "2.25.64001036570269566545444087952775894822"
NODE_ID_OID = x509.ObjectIdentifier(f"{STOCKADE_OID_ARC}.1")
RESULT_ID_OID = x509.ObjectIdentifier(f"{STOCKADE_OID_ARC}.2")

SPIFFE_PREFIX = "spiffe://stockade/node/"
KUBE_NODES_GROUP = "system:nodes"

CA_KEY_FILE = "ca-key.pem"
CA_CERT_FILE = "ca.pem"
CA_VALIDITY = datetime.timedelta(days=3650)
# A CA made this instant still covers node certificates backdated for clock skew.
CA_BACKDATE = datetime.timedelta(hours=1)

MAX_ID_LENGTH = 128
_NODE_ID = re.compile(r"[A-Za-z0-9._~-]+")


class ClusterCaError(StockadeError):
    """The CA cannot be loaded or refuses to issue (exit code 2)."""


class NodeCertificateRejected(VerificationFailed):
    """A node certificate does not verify against the cluster CA; ``check`` names why."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


def _utf8_extension(oid: x509.ObjectIdentifier, value: str) -> x509.Extension[x509.ExtensionType]:
    return x509.Extension(oid, False, x509.UnrecognizedExtension(oid, asn1.encode_der(value)))


def _utc(moment: datetime.datetime, what: str) -> datetime.datetime:
    if moment.tzinfo is None:
        raise ClusterCaError(f"{what} must be a timezone-aware datetime")
    # X.509 times have whole seconds; truncate so the certificate says exactly this.
    return moment.astimezone(datetime.UTC).replace(microsecond=0)


@dataclass(frozen=True)
class ClusterCa:
    """The CA key and certificate; issue node certificates with ``issue_node_certificate``."""

    directory: Path
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def load_or_create(cls, directory: Path, name: str = "Stockade cluster CA") -> ClusterCa:
        """Load the CA in ``directory``, creating its key and certificate on first use."""
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key_path = directory / CA_KEY_FILE
        cert_path = directory / CA_CERT_FILE
        with locked(directory / ".lock"):
            if not key_path.exists():
                if cert_path.exists():
                    raise ClusterCaError(f"{cert_path} exists but its key {key_path} is missing")
                write_private_key(key_path, ec.generate_private_key(ec.SECP256R1()))
            key = load_private_key(key_path)
            if not cert_path.exists():
                now = datetime.datetime.now(datetime.UTC)
                certificate = _ca_certificate(key, name, now)
                write_atomic(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
        return cls._loaded(directory, key, cert_path, key_path)

    @classmethod
    def create_files(
        cls, key_path: Path, cert_path: Path, name: str = "Stockade cluster CA"
    ) -> ClusterCa:
        """A new CA written to these two files (the key 0600; neither may exist yet)."""
        if cert_path.exists():
            raise ClusterCaError(f"{cert_path} exists; refusing to overwrite a CA")
        key = ec.generate_private_key(ec.SECP256R1())
        try:
            write_private_key(key_path, key)
        except OSError as error:
            raise ClusterCaError(f"cannot create {key_path}: {error.strerror}") from None
        certificate = _ca_certificate(key, name, datetime.datetime.now(datetime.UTC))
        write_atomic(cert_path, certificate.public_bytes(serialization.Encoding.PEM))
        return cls(key_path.parent, key, certificate)

    @classmethod
    def load(cls, key_path: Path, cert_path: Path) -> ClusterCa:
        """The CA in these two files, never written (a read-only directory of shared keys):
        the key is refused as ``load_or_create`` refuses it (unreadable, not P-256, readable
        by group or others), and so is a certificate that does not certify it."""
        return cls._loaded(key_path.parent, load_private_key(key_path), cert_path, key_path)

    @classmethod
    def _loaded(
        cls, directory: Path, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path
    ) -> ClusterCa:
        try:
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError) as error:
            raise ClusterCaError(f"cannot load CA certificate {cert_path}: {error}") from None
        if certificate.public_key() != key.public_key():
            raise ClusterCaError(f"{cert_path} does not certify the key in {key_path}")
        return cls(directory, key, certificate)

    def bundle_pem(self) -> bytes:
        """The CA certificate as PEM: what relying parties (and kube-apiserver) trust."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue_node_certificate(
        self,
        key_public: TpmPublic,
        *,
        node_id: str,
        node_name: str,
        result_id: str,
        not_before: datetime.datetime,
        not_after: datetime.datetime,
    ) -> x509.Certificate:
        """A certificate for the TPM-resident ``key_public``, valid exactly [not_before, not_after].

        The caller has verified the key's TPM2_Certify; the key's attributes are
        checked again here (``check_node_key``) so no other key gets a certificate.
        The certificate names only this node, as a TLS client: ``CN=system:node:<name>,
        O=system:nodes``, SAN ``spiffe://stockade/node/<id>`` only, EKU clientAuth only.
        Raises ``InvalidNodeName`` for a name that cannot be certified
        (``validate_node_name``), ``ClusterCaError`` for other bad arguments.
        """
        validate_node_name(node_name)
        check_node_key(key_public)
        start, end = _utc(not_before, "not_before"), _utc(not_after, "not_after")
        if start >= end:
            raise ClusterCaError(f"not_before {start} is not before not_after {end}")
        if not _NODE_ID.fullmatch(node_id) or len(node_id) > MAX_ID_LENGTH:
            raise ClusterCaError(f"node id {node_id!r} is not a URI-safe identifier")
        if not result_id or len(result_id) > MAX_ID_LENGTH:
            raise ClusterCaError(f"result id must be 1 to {MAX_ID_LENGTH} characters")
        common_name = KUBE_NODE_PREFIX + node_name
        public_key = key_public.public_key()
        # The node id URI and nothing else: no DNS or IP name a TLS client could match.
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(SPIFFE_PREFIX + node_id)]
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        builder = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, KUBE_NODES_GROUP),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    ]
                )
            )
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(digital_signature=True), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
        )
        for extension in (
            _utf8_extension(NODE_ID_OID, node_id),
            _utf8_extension(RESULT_ID_OID, result_id),
        ):
            builder = builder.add_extension(extension.value, critical=extension.critical)
        return builder.sign(self.key, hashes.SHA256())


def _ca_certificate(
    key: ec.EllipticCurvePrivateKey, name: str, now: datetime.datetime
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    start = (now - CA_BACKDATE).replace(microsecond=0)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _utf8_value(cert: x509.Certificate, oid: x509.ObjectIdentifier, what: str) -> str:
    try:
        extension = cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        raise NodeCertificateRejected(
            "identity", f"no {what} extension ({oid.dotted_string})"
        ) from None
    value = extension.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise NodeCertificateRejected("identity", f"{what} extension is not Stockade's")
    try:
        decoded = asn1.decode_der(str, value.value)
    except ValueError as error:
        raise NodeCertificateRejected(
            "identity", f"{what} extension is not a UTF8String: {error}"
        ) from None
    if not decoded:
        raise NodeCertificateRejected("identity", f"{what} extension is empty")
    return decoded


def node_identity(cert: x509.Certificate) -> tuple[str, str]:
    """(node id, attestation result id) from a node certificate's private extensions."""
    return (
        _utf8_value(cert, NODE_ID_OID, "node id"),
        _utf8_value(cert, RESULT_ID_OID, "result id"),
    )


def verify_node_certificate(
    cert: x509.Certificate, ca_cert: x509.Certificate, now: datetime.datetime
) -> tuple[str, str]:
    """Check ``cert`` as a relying party would; return (node id, result id).

    The certificate must be signed by ``ca_cert``, valid at ``now`` (as must the
    CA), and pass RFC 5280 path validation for a TLS client (``cryptography``'s
    verifier: key usage, EKU, basic constraints). Raises ``NodeCertificateRejected``.
    """
    moment = now.astimezone(datetime.UTC) if now.tzinfo else None
    if moment is None:
        raise NodeCertificateRejected("time", "now must be a timezone-aware datetime")
    if cert.issuer != ca_cert.subject:
        raise NodeCertificateRejected(
            "issuer", f"issued by {cert.issuer.rfc4514_string()}, not by this cluster CA"
        )
    try:
        cert.verify_directly_issued_by(ca_cert)
    except InvalidSignature:
        raise NodeCertificateRejected(
            "signature", "the certificate's signature does not verify with the cluster CA's key"
        ) from None
    except (ValueError, TypeError) as error:
        raise NodeCertificateRejected(
            "signature", f"not signed by the cluster CA: {error}"
        ) from None
    if moment < cert.not_valid_before_utc:
        raise NodeCertificateRejected(
            "validity", f"not valid before {cert.not_valid_before_utc.isoformat()}"
        )
    if moment > cert.not_valid_after_utc:
        raise NodeCertificateRejected(
            "validity", f"expired at {cert.not_valid_after_utc.isoformat()}"
        )
    verifier = PolicyBuilder().store(Store([ca_cert])).time(moment).build_client_verifier()
    try:
        verifier.verify(cert, [])
    except VerificationError as error:
        raise NodeCertificateRejected("path", str(error)) from None
    return node_identity(cert)
