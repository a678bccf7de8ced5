"""EK certificate validation: chain to a trusted vendor root, validity, and key match."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from stockade.evidence import (
    EkCertificateInvalid,
    EvidenceError,
    validate_ek_certificate,
)
from stockade.evidence.ek_certificate import load_certificate

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)  # the certificates in conftest.py are built around it


def der(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(params=["rsa", "ecc"])
def ek(request, pki, ek_templates, rsa_ek_key, ecc_ek_key):
    """(EK certificate, the TPM's EK TPMT_PUBLIC, EK private key)."""
    if request.param == "rsa":
        return (
            pki.rsa_ek_cert,
            ek_templates.rsa.with_public_key(rsa_ek_key.public_key()),
            rsa_ek_key,
        )
    return pki.ecc_ek_cert, ek_templates.ecc.with_public_key(ecc_ek_key.public_key()), ecc_ek_key


def validate(cert, public, pki, **kwargs):
    options = {"trusted_roots": [pki.root], "intermediates": [pki.intermediate], "now": NOW}
    options.update(kwargs)
    return validate_ek_certificate(cert, public, **options)


def test_valid_chain_passes(pki, ek):
    cert, public, _ = ek
    validated = validate(cert, public, pki)
    assert validated.public == public
    assert validated.certificate == cert
    assert validated.chain == (pki.intermediate, pki.root)


def test_valid_chain_passes_from_der_and_pem_bytes(pki, ek):
    cert, public, _ = ek
    assert validate(der(cert), public, pki).certificate == cert
    pem = cert.public_bytes(serialization.Encoding.PEM)
    assert validate(pem, public, pki).certificate == cert


def test_leaf_issued_directly_by_a_root(pki, ek_templates, rsa_ek_key):
    leaf = pki.certificate(
        "EK",
        rsa_ek_key.public_key(),
        issuer="Vendor Root CA",
        issuer_key=pki.root_key,
        ca=None,
        key_cert_sign=None,
    )
    public = ek_templates.rsa.with_public_key(rsa_ek_key.public_key())
    assert validate(leaf, public, pki, intermediates=[]).chain == (pki.root,)


def test_root_is_found_among_several_and_extra_intermediates_are_ignored(pki, ek):
    cert, public, _ = ek
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_root = pki.certificate("Other Root", other_key.public_key(), issuer_key=other_key)
    validated = validate(
        cert,
        public,
        pki,
        trusted_roots=[other_root, pki.root],
        intermediates=[other_root, pki.intermediate],
    )
    assert validated.chain == (pki.intermediate, pki.root)


def test_leaf_signed_by_another_ca_with_the_same_name_is_rejected(pki, ek, ek_templates):
    """An attacker's CA that copies the vendor intermediate's name, but not its key."""
    cert, public, private = ek
    impostor_key = ec.generate_private_key(ec.SECP256R1())
    forged = pki.leaf(private.public_key(), issuer_key=impostor_key)
    assert forged.issuer == cert.issuer
    with pytest.raises(EkCertificateInvalid) as caught:
        validate(forged, public, pki)
    assert caught.value.check == "chain"
    assert "does not chain to a trusted TPM vendor CA" in caught.value.detail


def test_intermediate_not_supplied_is_rejected(pki, ek):
    cert, public, _ = ek
    with pytest.raises(EkCertificateInvalid) as caught:
        validate(cert, public, pki, intermediates=[])
    assert caught.value.check == "chain"


def test_untrusted_root_is_rejected(pki, ek):
    """The whole chain is fine but its root is not one the verifier trusts."""
    cert, public, _ = ek
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_root = pki.certificate("Vendor Root CA", other_key.public_key(), issuer_key=other_key)
    with pytest.raises(EkCertificateInvalid) as caught:
        validate(
            cert,
            public,
            pki,
            trusted_roots=[other_root],
            intermediates=[pki.intermediate, pki.root],
        )
    assert caught.value.check == "chain"


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [
        (NOW - timedelta(days=800), NOW - timedelta(seconds=1)),  # expired
        (NOW + timedelta(seconds=1), NOW + timedelta(days=800)),  # not yet valid
    ],
    ids=["expired", "not-yet-valid"],
)
def test_leaf_outside_its_validity_is_rejected(pki, ek, not_before, not_after):
    _, public, private = ek
    leaf = pki.leaf(private.public_key(), not_before=not_before, not_after=not_after)
    with pytest.raises(EkCertificateInvalid) as caught:
        validate(leaf, public, pki)
    assert caught.value.check == "validity"


def test_expired_intermediate_is_rejected(pki, ek):
    cert, public, _ = ek
    expired = pki.certificate(
        "Vendor EK CA 01",
        pki.intermediate_key.public_key(),
        issuer="Vendor Root CA",
        issuer_key=pki.root_key,
        not_before=NOW - timedelta(days=800),
        not_after=NOW - timedelta(days=1),
    )
    with pytest.raises(EkCertificateInvalid) as caught:
        validate(cert, public, pki, intermediates=[expired])
    assert caught.value.check == "validity"


def test_expired_root_is_rejected(pki, ek):
    cert, public, _ = ek
    expired_root = pki.certificate(
        "Vendor Root CA",
        pki.root_key.public_key(),
        issuer_key=pki.root_key,
        not_before=NOW - timedelta(days=800),
        not_after=NOW - timedelta(days=1),
    )
    with pytest.raises(EkCertificateInvalid) as caught:
        validate(cert, public, pki, trusted_roots=[expired_root])
    assert caught.value.check == "validity"


def test_certificate_for_another_key_is_rejected(pki, ek_templates, rsa_ek_key, ecc_ek_key):
    """A genuine EK certificate, presented with an EK the TPM does not have (or vice versa)."""
    someone_else = ec.generate_private_key(ec.SECP256R1())
    tpm_ek = ek_templates.ecc.with_public_key(someone_else.public_key())
    with pytest.raises(EkCertificateInvalid) as caught:
        validate(pki.ecc_ek_cert, tpm_ek, pki)
    assert caught.value.check == "key"
    # an RSA certificate for an ECC EK
    with pytest.raises(EkCertificateInvalid) as caught:
        validate(pki.rsa_ek_cert, ek_templates.ecc.with_public_key(ecc_ek_key.public_key()), pki)
    assert caught.value.check == "key"


@pytest.mark.parametrize(
    ("ca", "key_cert_sign"),
    [(False, True), (None, True), (True, False)],
    ids=["ca-false", "no-basic-constraints", "no-keyCertSign"],
)
def test_intermediate_that_may_not_issue_is_rejected(pki, ek_templates, ca, key_cert_sign):
    """An ordinary end-entity key used to sign an EK certificate."""
    not_a_ca_key = ec.generate_private_key(ec.SECP256R1())
    not_a_ca = pki.certificate(
        "Vendor EK CA 02",
        not_a_ca_key.public_key(),
        issuer="Vendor Root CA",
        issuer_key=pki.root_key,
        ca=ca,
        key_cert_sign=key_cert_sign,
    )
    ek_key = ec.generate_private_key(ec.SECP256R1())
    leaf = pki.leaf(ek_key.public_key(), issuer="Vendor EK CA 02", issuer_key=not_a_ca_key)
    public = ek_templates.ecc.with_public_key(ek_key.public_key())
    with pytest.raises(EkCertificateInvalid) as caught:
        validate(leaf, public, pki, intermediates=[not_a_ca])
    assert caught.value.check == "chain"
    assert "Vendor EK CA 02" in caught.value.detail


def test_root_that_is_not_a_ca_is_rejected(pki, ek_templates):
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = pki.certificate("Plain Root", root_key.public_key(), issuer_key=root_key, ca=False)
    ek_key = ec.generate_private_key(ec.SECP256R1())
    leaf = pki.leaf(ek_key.public_key(), issuer="Plain Root", issuer_key=root_key)
    with pytest.raises(EkCertificateInvalid) as caught:
        validate(
            leaf,
            ek_templates.ecc.with_public_key(ek_key.public_key()),
            pki,
            trusted_roots=[root],
            intermediates=[],
        )
    assert caught.value.check == "chain"


def test_empty_trusted_roots_are_rejected(pki, ek):
    cert, public, _ = ek
    with pytest.raises(EkCertificateInvalid) as caught:
        validate(cert, public, pki, trusted_roots=[])
    assert caught.value.check == "chain"
    assert "no trusted" in caught.value.detail


def test_ca_certificate_as_ek_certificate_is_rejected(pki, ek_templates):
    ek_key = ec.generate_private_key(ec.SECP256R1())
    leaf = pki.leaf(ek_key.public_key(), ca=True, key_cert_sign=True)
    with pytest.raises(EkCertificateInvalid) as caught:
        validate(leaf, ek_templates.ecc.with_public_key(ek_key.public_key()), pki)
    assert caught.value.check == "leaf"


def test_leaf_with_an_unrelated_extended_key_usage_is_rejected(pki, ek_templates):
    ek_key = ec.generate_private_key(ec.SECP256R1())
    leaf = pki.leaf(ek_key.public_key(), eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    with pytest.raises(EkCertificateInvalid) as caught:
        validate(leaf, ek_templates.ecc.with_public_key(ek_key.public_key()), pki)
    assert caught.value.check == "leaf"


def test_errors_are_verification_failures(pki, ek):
    cert, public, _ = ek
    with pytest.raises(EkCertificateInvalid) as caught:
        validate(cert, public, pki, trusted_roots=[])
    assert isinstance(caught.value, EvidenceError)
    assert caught.value.exit_code == 1


# -- loading ----------------------------------------------------------------------------


@pytest.mark.parametrize("padding", [1, 7, 512])
def test_der_with_trailing_nv_padding_loads(pki, ek, padding):
    cert, public, _ = ek
    padded = der(cert) + bytes(padding)
    assert load_certificate(padded) == cert
    assert validate(padded, public, pki).certificate == cert
    assert load_certificate(der(cert) + b"\xff" * padding) == cert


def test_pem_with_leading_whitespace_loads(pki):
    pem = b"\n  " + pki.rsa_ek_cert.public_bytes(serialization.Encoding.PEM)
    assert load_certificate(pem) == pki.rsa_ek_cert


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x30",
        b"\x30\x82\x01\x00",
        b"garbage that is not a certificate",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        bytes(1000),
    ],
)
def test_garbage_is_an_evidence_error(data):
    with pytest.raises(EvidenceError, match=r"not a readable X\.509 certificate"):
        load_certificate(data)


def test_truncated_der_is_an_evidence_error(pki):
    with pytest.raises(EvidenceError):
        load_certificate(der(pki.rsa_ek_cert)[:-1])


def test_certificate_with_an_invalid_version_is_an_evidence_error(pki):
    data = der(pki.rsa_ek_cert)
    # TBSCertificate.version is [0] EXPLICIT INTEGER: a0 03 02 01 02 for v3.
    version = bytes.fromhex("a003020102")
    assert data.find(version) in range(4, 16)
    bad = data.replace(version, bytes.fromhex("a003020103"), 1)
    with pytest.raises(EvidenceError):
        load_certificate(bad)


def _with_curve_oid_replaced(data: bytes) -> bytes:
    """P-256 (1.2.840.10045.3.1.7) renamed to 1.2.840.10045.3.1.9, which nobody implements."""
    p256 = bytes.fromhex("06082a8648ce3d030107")
    assert data.count(p256) == 1
    return data.replace(p256, bytes.fromhex("06082a8648ce3d030109"))


def test_ek_certificate_with_an_unknown_curve_is_an_evidence_error(pki, ek_templates, ecc_ek_key):
    data = _with_curve_oid_replaced(der(pki.ecc_ek_cert))
    public = ek_templates.ecc.with_public_key(ecc_ek_key.public_key())
    with pytest.raises(EvidenceError):
        validate(data, public, pki)


def test_ek_certificate_with_a_malformed_extension_is_an_evidence_error(pki, ek):
    cert, public, _ = ek
    data = der(cert)
    # BasicConstraints(cA=FALSE) is the extnValue OCTET STRING { SEQUENCE {} }: 04 02 30 00.
    # Turn the SEQUENCE into a SET: still well-formed DER, no longer a BasicConstraints.
    assert data.count(bytes.fromhex("04023000")) == 1
    bad = data.replace(bytes.fromhex("04023000"), bytes.fromhex("04023100"))
    loaded = load_certificate(bad)  # loads: the certificate itself is well-formed
    assert loaded.serial_number == cert.serial_number
    with pytest.raises(EvidenceError):
        validate(bad, public, pki)
