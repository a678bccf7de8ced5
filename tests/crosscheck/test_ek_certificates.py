"""EK certificates made by swtpm_setup validate against Stockade's EK CA; a
certificate from another CA, an expired one, or one for a different key is refused.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.evidence import EkCertificateInvalid, EvidenceError, validate_ek_certificate
from stockade.evidence.ek_certificate import load_certificate
from stockade.evidence.templates import KeyKind
from stockade.tpm.device import Tpm
from stockade.tpm.ek import read_endorsement
from stockade.tpm.ekca import EkCa

pytestmark = [pytest.mark.swtpm, pytest.mark.crosscheck]


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture(scope="module")
def endorsements(shared_software_tpm):
    with Tpm(shared_software_tpm.tcti) as tpm:
        return {kind: read_endorsement(tpm, kind) for kind in KeyKind}


@pytest.mark.parametrize("kind", list(KeyKind), ids=lambda k: k.value)
def test_swtpm_ek_certificates_validate(kind, endorsements, ek_ca):
    endorsement = endorsements[kind]
    assert endorsement.certificate is not None, f"no {kind} EK certificate in NV"
    validated = validate_ek_certificate(
        endorsement.certificate,
        endorsement.public,
        trusted_roots=ek_ca.trusted_roots(),
        intermediates=ek_ca.intermediates(),
        now=now(),
    )
    assert validated.chain[-1] == ek_ca.root_certificate()
    assert validated.certificate.public_key().public_numbers() == (
        endorsement.public.public_key().public_numbers()
    )


def test_certificate_from_another_ca_is_refused(endorsements, ek_ca, tmp_path):
    stranger = EkCa.load_or_create(tmp_path / "other-ca")
    endorsement = endorsements[KeyKind.RSA]
    with pytest.raises(EkCertificateInvalid) as refused:
        validate_ek_certificate(
            endorsement.certificate,
            endorsement.public,
            trusted_roots=stranger.trusted_roots(),
            intermediates=stranger.intermediates(),
            now=now(),
        )
    assert refused.value.check == "chain"
    # A certificate for the right key, issued by the stranger, is refused by our roots.
    forged = stranger.issue_ek_certificate(endorsement.public.public_key())
    with pytest.raises(EkCertificateInvalid, match="does not chain"):
        validate_ek_certificate(
            forged,
            endorsement.public,
            trusted_roots=ek_ca.trusted_roots(),
            intermediates=[*ek_ca.intermediates(), *stranger.intermediates()],
            now=now(),
        )


def test_expired_certificate_is_refused(endorsements, ek_ca):
    endorsement = endorsements[KeyKind.ECC]
    certificate = load_certificate(endorsement.certificate)
    # swtpm, like most TPM vendors, issues EK certificates that never expire.
    assert certificate.not_valid_after_utc.year == 9999
    with pytest.raises(EkCertificateInvalid) as refused:
        validate_ek_certificate(
            certificate,
            endorsement.public,
            trusted_roots=ek_ca.trusted_roots(),
            intermediates=ek_ca.intermediates(),
            now=certificate.not_valid_before_utc - timedelta(days=1),
        )
    assert refused.value.check == "validity"
    # One issued by our own CA that has already expired.
    issuer_key = _issuer_key(ek_ca)
    expired = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ek_ca.issuer_certificate().subject)
        .public_key(endorsement.public.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now() - timedelta(days=30))
        .not_valid_after(now() - timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )
    with pytest.raises(EkCertificateInvalid, match="expired"):
        validate_ek_certificate(
            expired,
            endorsement.public,
            trusted_roots=ek_ca.trusted_roots(),
            intermediates=ek_ca.intermediates(),
            now=now(),
        )


def _issuer_key(ek_ca: EkCa) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(ek_ca.issuer_key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def test_certificate_for_another_key_is_refused(endorsements, ek_ca, make_software_tpm):
    rsa_ek, ecc_ek = endorsements[KeyKind.RSA], endorsements[KeyKind.ECC]
    with pytest.raises(EkCertificateInvalid) as refused:
        validate_ek_certificate(
            ecc_ek.certificate,
            rsa_ek.public,
            trusted_roots=ek_ca.trusted_roots(),
            intermediates=ek_ca.intermediates(),
            now=now(),
        )
    assert refused.value.check == "key"
    # A genuine certificate from another TPM (same CA) does not vouch for this EK.
    with Tpm(make_software_tpm().tcti) as other:
        foreign = read_endorsement(other, KeyKind.RSA)
    with pytest.raises(EkCertificateInvalid, match="different key"):
        validate_ek_certificate(
            foreign.certificate,
            rsa_ek.public,
            trusted_roots=ek_ca.trusted_roots(),
            intermediates=ek_ca.intermediates(),
            now=now(),
        )


def test_unreadable_certificate_is_a_typed_error(endorsements, ek_ca):
    with pytest.raises(EvidenceError):
        validate_ek_certificate(
            b"\x30\x82\x01\x00 not a certificate",
            endorsements[KeyKind.RSA].public,
            trusted_roots=ek_ca.trusted_roots(),
            now=now(),
        )
