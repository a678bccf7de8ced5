"""The cluster CA: its own certificate, node certificates for TPM-resident keys, and what a
relying party checks (chain, validity at ``now``, the node and result ids).

Keys here are software keys wrapped in a node-key-shaped TPMT_PUBLIC: the CA sees only the
public area. tests/tpm/test_node_key.py uses the same CA with a real TPM key over TLS.
"""

from __future__ import annotations

import ipaddress
import ssl
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from stockade.cluster.ca import (
    NODE_ID_OID,
    RESULT_ID_OID,
    ClusterCa,
    ClusterCaError,
    NodeCertificateRejected,
    node_identity,
    verify_node_certificate,
)
from stockade.cluster.names import InvalidNodeName
from stockade.errors import InputError, StockadeError
from stockade.evidence.algorithms import Alg, EccCurve
from stockade.evidence.certify import CertifyRejected
from stockade.evidence.public import (
    EccParameters,
    EccPoint,
    ObjectAttributes,
    Scheme,
    SymmetricDefinition,
    TpmPublic,
)

NOW = datetime(2031, 3, 4, 5, 6, 7, tzinfo=UTC)
NODE_ID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
RESULT_ID = "res-7f3a9c"

# What TSSPrivKey.create_ecc (and tpm2-openssl) make: 0x00040472.
NODE_KEY_ATTRIBUTES = (
    ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.SENSITIVE_DATA_ORIGIN
    | ObjectAttributes.USER_WITH_AUTH
    | ObjectAttributes.NO_DA
    | ObjectAttributes.SIGN_ENCRYPT
)


def node_key_public(key: ec.EllipticCurvePrivateKey, attributes: int = NODE_KEY_ATTRIBUTES):
    template = TpmPublic(
        type=Alg.ECC,
        name_alg=Alg.SHA256,
        attributes=int(attributes),
        auth_policy=b"",
        parameters=EccParameters(
            SymmetricDefinition(), Scheme(Alg.NULL), EccCurve.NIST_P256, Scheme(Alg.NULL)
        ),
        unique=EccPoint(b"", b""),
    )
    return template.with_public_key(key.public_key())


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> ClusterCa:
    return ClusterCa.load_or_create(tmp_path_factory.mktemp("cluster-ca"))


@pytest.fixture(scope="module")
def node_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def issue(ca: ClusterCa, key: ec.EllipticCurvePrivateKey, **overrides) -> x509.Certificate:
    arguments = {
        "node_id": NODE_ID,
        "node_name": "worker-1.example.net",
        "result_id": RESULT_ID,
        "not_before": NOW - timedelta(minutes=1),
        "not_after": NOW + timedelta(minutes=2),
    }
    arguments.update(overrides)
    return ca.issue_node_certificate(node_key_public(key), **arguments)


# -- the CA itself -------------------------------------------------------------------------


def test_ca_is_created_once_with_a_private_key_only_its_owner_reads(tmp_path):
    directory = tmp_path / "ca"
    ca = ClusterCa.load_or_create(directory, name="Test cluster CA")
    key_mode = stat.S_IMODE((directory / "ca-key.pem").stat().st_mode)
    assert key_mode == 0o600
    cert = ca.certificate
    assert cert.subject.rfc4514_string() == "CN=Test cluster CA"
    assert cert.issuer == cert.subject
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == timedelta(days=3650)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    cert.verify_directly_issued_by(cert)
    assert ca.bundle_pem() == cert.public_bytes(serialization.Encoding.PEM)

    again = ClusterCa.load_or_create(directory, name="ignored once created")
    assert again.certificate == cert
    assert again.key.private_numbers() == ca.key.private_numbers()


def test_ca_key_readable_by_others_is_refused(tmp_path):
    ClusterCa.load_or_create(tmp_path)
    (tmp_path / "ca-key.pem").chmod(0o640)
    with pytest.raises(StockadeError, match="readable by group or others"):
        ClusterCa.load_or_create(tmp_path)


def test_ca_certificate_without_its_key_is_refused(tmp_path):
    ClusterCa.load_or_create(tmp_path)
    (tmp_path / "ca-key.pem").unlink()
    with pytest.raises(ClusterCaError, match="missing"):
        ClusterCa.load_or_create(tmp_path)


def test_ca_certificate_for_another_key_is_refused(tmp_path):
    ClusterCa.load_or_create(tmp_path / "a")
    ClusterCa.load_or_create(tmp_path / "b")
    (tmp_path / "a" / "ca.pem").write_bytes((tmp_path / "b" / "ca.pem").read_bytes())
    with pytest.raises(ClusterCaError, match="does not certify"):
        ClusterCa.load_or_create(tmp_path / "a")


# -- node certificates ---------------------------------------------------------------------


def test_node_certificate_fields(ca, node_key):
    cert = issue(ca, node_key)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "system:node:worker-1.example.net"
    )
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
        "system:nodes"
    )
    assert len(cert.subject) == 2  # O and CN, nothing else
    assert cert.issuer == ca.certificate.subject
    assert cert.public_key() == node_key.public_key()

    # The node id URI is the only subject alternative name: no DNS name, no IP address.
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(names) == [x509.UniformResourceIdentifier(f"spiffe://stockade/node/{NODE_ID}")]
    assert names.get_values_for_type(x509.DNSName) == []
    assert names.get_values_for_type(x509.IPAddress) == []

    # A TLS client certificate only.
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ExtendedKeyUsageOID.SERVER_AUTH not in eku
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not (usage.value.key_cert_sign or usage.value.key_encipherment)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca

    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(node_key.public_key())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ca_ski.value.digest

    assert 0 < cert.serial_number < 2**159
    assert issue(ca, node_key).serial_number != cert.serial_number


def test_validity_is_exactly_what_was_asked_for(ca, node_key):
    start = NOW - timedelta(seconds=60, microseconds=999)
    end = NOW + timedelta(minutes=2)
    cert = issue(ca, node_key, not_before=start, not_after=end)
    assert cert.not_valid_before_utc == start.replace(microsecond=0)
    assert cert.not_valid_after_utc == end
    assert cert.not_valid_after_utc - cert.not_valid_before_utc < timedelta(minutes=4)


def test_identity_extensions_use_a_uuid_oid_arc_and_are_non_critical(ca, node_key):
    arc = f"2.25.{uuid.UUID('302626ba-4d70-4e35-801a-50df30e0d726').int}"
    assert NODE_ID_OID.dotted_string == arc + ".1"
    assert RESULT_ID_OID.dotted_string == arc + ".2"
    cert = issue(ca, node_key)
    for oid, value in ((NODE_ID_OID, NODE_ID), (RESULT_ID_OID, RESULT_ID)):
        extension = cert.extensions.get_extension_for_oid(oid)
        assert not extension.critical
        der = extension.value.value
        assert der[0] == 0x0C  # UTF8String
        assert der[2:].decode() == value
    assert node_identity(cert) == (NODE_ID, RESULT_ID)


def test_a_name_of_52_characters_fills_the_common_name_exactly(ca, node_key):
    name = "n" * 52
    cert = issue(ca, node_key, node_name=name)
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == "system:node:" + name and len(common_name) == 64
    assert verify_node_certificate(cert, ca.certificate, NOW) == (NODE_ID, RESULT_ID)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("n" * 53, "at most 52"),  # used to be a 500 from inside the certificate builder
        ("n" * 60, "at most 52"),
        ("", "empty"),
        ("Worker_1", "uppercase"),
        ("worker_1", "RFC 1123"),
        (NODE_ID, "UUID"),  # an id as a name, to capture node:<id> grants
        ("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "UUID"),
        ("10.0.0.1", "IP address"),
        ("w\u043erker-1", "Unicode"),  # Cyrillic o
        ("x/o=system:masters", "RFC 1123"),  # an RDN for openssl -subj
    ],
)
def test_names_that_cannot_be_certified_are_refused_with_invalid_node_name(
    ca, node_key, name, reason
):
    with pytest.raises(InvalidNodeName) as caught:
        issue(ca, node_key, node_name=name)
    assert reason in caught.value.reason
    assert isinstance(caught.value, InputError)  # the caller's mistake, not an internal error


def _tls_handshake(
    server_cert: x509.Certificate,
    server_key: ec.EllipticCurvePrivateKey,
    ca_pem: bytes,
    hostname: str,
    directory: Path,
) -> None:
    """A TLS handshake in memory: an ordinary Python (OpenSSL) client that trusts ``ca_pem``
    and checks ``hostname``, against a server presenting ``server_cert``. Raises ssl.SSLError
    when the client refuses."""
    cert_file, key_file = directory / "server.pem", directory / "server-key.pem"
    cert_file.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_file, key_file)
    client_context = ssl.create_default_context(cadata=ca_pem.decode())
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(client_in, client_out, server_hostname=hostname)
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, tls, outgoing, peer_in in (
            ("client", client, client_out, server_in),
            ("server", server, server_out, client_in),
        ):
            if not done[side]:
                try:
                    tls.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(outgoing.read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


def _as_server_certificate(
    ca: ClusterCa, cert: x509.Certificate, dns_name: str
) -> x509.Certificate:
    """``cert`` as node certificates used to be: DNS:<name> and serverAuth added."""
    replaced = {x509.SubjectAlternativeName.oid, x509.ExtendedKeyUsage.oid}
    builder = x509.CertificateBuilder(
        issuer_name=cert.issuer,
        subject_name=cert.subject,
        public_key=cert.public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=cert.not_valid_before_utc,
        not_valid_after=cert.not_valid_after_utc,
        extensions=[e for e in cert.extensions if e.oid not in replaced],
    )
    names = [x509.UniformResourceIdentifier(f"spiffe://stockade/node/{NODE_ID}")]
    eku = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
    return (
        builder.add_extension(
            x509.SubjectAlternativeName([*names, x509.DNSName(dns_name)]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .sign(ca.key, hashes.SHA256())
    )


def test_a_node_named_like_a_service_cannot_serve_tls_as_it(ca, node_key, tmp_path):
    """Attack: enroll a node as ``kubernetes.default.svc`` and present its cluster-CA
    certificate as that service's server certificate to a client that trusts the cluster CA
    (kube-apiserver's --client-ca-file bundle, the agent's ``ca_bundle``)."""
    service = "kubernetes.default.svc"
    now = datetime.now(UTC)
    cert = issue(
        ca,
        node_key,
        node_name=service,  # a valid node name: the certificate is what must not serve it
        not_before=now - timedelta(minutes=1),
        not_after=now + timedelta(minutes=5),
    )
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "system:node:" + service
    )

    # The harness is not refusing everything: the certificate shaped as before this change
    # (DNS:<name>, serverAuth) from the same CA and key passes the same handshake.
    _tls_handshake(
        _as_server_certificate(ca, cert, service), node_key, ca.bundle_pem(), service, tmp_path
    )

    # The certificate Stockade issues is refused by OpenSSL in a real handshake ...
    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        _tls_handshake(cert, node_key, ca.bundle_pem(), service, tmp_path)
    # X509_V_ERR_INVALID_PURPOSE: no serverAuth (the name is checked too, and matches nothing).
    assert refused.value.verify_code == 26, refused.value
    assert "certificate purpose" in str(refused.value)
    # ... and by RFC 5280 path validation as a server, under the name and under any IP.
    for name in (x509.DNSName(service), x509.IPAddress(ipaddress.ip_address("10.96.0.1"))):
        verifier = (
            PolicyBuilder().store(Store([ca.certificate])).time(now).build_server_verifier(name)
        )
        with pytest.raises(VerificationError):
            verifier.verify(cert, [])
    # It is still what it is for: the node's client certificate.
    assert verify_node_certificate(cert, ca.certificate, now) == (NODE_ID, RESULT_ID)


def test_the_ca_refuses_keys_that_are_not_node_keys(ca, node_key):
    """An AK (restricted) or an exportable key must never get a TLS certificate."""
    for attributes in (
        NODE_KEY_ATTRIBUTES | ObjectAttributes.RESTRICTED,
        NODE_KEY_ATTRIBUTES & ~ObjectAttributes.FIXED_TPM,
    ):
        with pytest.raises(CertifyRejected):
            ca.issue_node_certificate(
                node_key_public(node_key, attributes),
                node_id=NODE_ID,
                node_name="n",
                result_id=RESULT_ID,
                not_before=NOW,
                not_after=NOW + timedelta(minutes=1),
            )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"not_after": NOW - timedelta(minutes=1)}, "is not before"),
        ({"not_before": datetime(2031, 3, 4)}, "timezone-aware"),
        ({"node_id": "a/b"}, "URI-safe"),
        ({"result_id": ""}, "result id"),
    ],
)
def test_bad_issuance_arguments_are_refused(ca, node_key, overrides, message):
    with pytest.raises(ClusterCaError, match=message):
        issue(ca, node_key, **overrides)


# -- relying parties -----------------------------------------------------------------------


def test_relying_party_gets_the_ids_of_a_valid_certificate(ca, node_key):
    cert = issue(ca, node_key)
    assert verify_node_certificate(cert, ca.certificate, NOW) == (NODE_ID, RESULT_ID)
    # Inclusive at both ends of the window.
    assert verify_node_certificate(cert, ca.certificate, cert.not_valid_after_utc)[0] == NODE_ID
    assert verify_node_certificate(cert, ca.certificate, cert.not_valid_before_utc)[0] == NODE_ID


@pytest.mark.parametrize(
    ("moment", "message"),
    [(NOW + timedelta(minutes=2, seconds=1), "expired at"), (NOW - timedelta(hours=1), "before")],
)
def test_certificate_outside_its_window_is_rejected(ca, node_key, moment, message):
    cert = issue(ca, node_key)
    with pytest.raises(NodeCertificateRejected, match=message) as caught:
        verify_node_certificate(cert, ca.certificate, moment)
    assert caught.value.check == "validity"


def test_certificate_from_another_ca_with_the_same_name_is_rejected(tmp_path, ca, node_key):
    """An attacker's CA can copy our CA's name; it cannot copy its key."""
    impostor = ClusterCa.load_or_create(tmp_path, name="Stockade cluster CA")
    assert impostor.certificate.subject == ca.certificate.subject
    forged = issue(impostor, node_key)
    with pytest.raises(NodeCertificateRejected) as caught:
        verify_node_certificate(forged, ca.certificate, NOW)
    assert caught.value.check == "signature"


def test_certificate_from_a_differently_named_ca_is_rejected(tmp_path, ca, node_key):
    other = ClusterCa.load_or_create(tmp_path, name="Other CA")
    with pytest.raises(NodeCertificateRejected) as caught:
        verify_node_certificate(issue(other, node_key), ca.certificate, NOW)
    assert caught.value.check == "issuer"


def test_tampered_certificate_is_rejected(ca, node_key):
    """Rewriting the result id (to claim a newer attestation) breaks the CA's signature."""
    cert = issue(ca, node_key)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert der.count(RESULT_ID.encode()) == 1
    tampered = x509.load_der_x509_certificate(der.replace(RESULT_ID.encode(), b"res-000000"))
    assert node_identity(tampered) == (NODE_ID, "res-000000")
    with pytest.raises(NodeCertificateRejected) as caught:
        verify_node_certificate(tampered, ca.certificate, NOW)
    assert caught.value.check == "signature"


def test_certificate_without_identity_extensions_is_rejected(ca, node_key):
    """A certificate the CA signed for something else (here: itself) names no node."""
    with pytest.raises(NodeCertificateRejected) as caught:
        node_identity(ca.certificate)
    assert caught.value.check == "identity"


def test_naive_now_is_refused(ca, node_key):
    with pytest.raises(NodeCertificateRejected, match="timezone-aware"):
        verify_node_certificate(issue(ca, node_key), ca.certificate, datetime(2031, 3, 4))
