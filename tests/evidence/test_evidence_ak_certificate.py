"""AK certificates of cloud vTPMs (``stockade.evidence.ak_certificate``), without a TPM: the
path to the AK roots, the key, the AK's attributes, and the GCE instance identity extension
(every malformed encoding a typed error, never a traceback)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.evidence.ak_certificate import (
    GCE_INSTANCE_OID,
    GceInstance,
    ak_identity,
    encode_gce_instance,
    parse_gce_instance,
    validate_ak_certificate,
)
from stockade.evidence.errors import (
    AkCertificateInvalid,
    EvidenceError,
    EvidenceInvalid,
    InstanceIdentityMalformed,
)
from stockade.evidence.public import ObjectAttributes
from stockade.evidence.templates import KeyKind, ak_template

NOW = datetime(2030, 6, 1, tzinfo=UTC)
INSTANCE = GceInstance(
    zone="europe-west4-a",
    project_id="acme-prod",
    project_number=987654321098,
    instance_id=5551234567890123456,
    instance_name="db-1",
    security_version=3,
    is_production=True,
)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _usage(*, sign: bool = False, ca: bool = False, encipher: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(sign, False, encipher, False, False, ca, ca, False, False)


class Pki:
    """A root, an issuing CA under it, and AK certificates for software keys."""

    def __init__(self, label: str) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.root = self._ca(f"{label} root", self.root_key.public_key(), None, 1)
        self.ca = self._ca(f"{label} issuing", self.ca_key.public_key(), self.root, 0)

    def _ca(self, subject: str, key, issuer, path_length: int) -> x509.Certificate:
        return (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(issuer.subject if issuer else _name(subject))
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=30))
            .not_valid_after(NOW + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), True)
            .add_extension(_usage(ca=True), True)
            .sign(self.root_key, hashes.SHA256())
        )

    def issue(
        self,
        key: ec.EllipticCurvePublicKey,
        *,
        usage: x509.KeyUsage | None = None,
        extension: bytes | None = None,
        ca: bool = False,
        not_after: datetime | None = None,
        eku: list[ObjectIdentifier] | None = None,
        critical_extra: bool = False,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name("ak"))
            .issuer_name(self.ca.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(days=1))
            .not_valid_after(not_after or NOW + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
        )
        if usage is not False:
            builder = builder.add_extension(usage or _usage(sign=True), True)
        if extension is not None:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(GCE_INSTANCE_OID, extension), False
            )
        if eku is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage(eku), False)
        if critical_extra:
            builder = builder.add_extension(
                x509.UnrecognizedExtension(ObjectIdentifier("1.2.3.4.5"), b"\x05\x00"), True
            )
        return builder.sign(self.ca_key, hashes.SHA256())


@pytest.fixture(scope="module")
def cloud() -> Pki:
    return Pki("cloud")


@pytest.fixture(scope="module")
def vendor() -> Pki:
    return Pki("ek vendor")


@pytest.fixture(scope="module")
def ak_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def ak_public(ak_key):
    return ak_template(KeyKind.ECC).with_public_key(ak_key.public_key())


def _validate(certificate, ak_public, pki: Pki, **options):
    return validate_ak_certificate(
        certificate,
        ak_public,
        trusted_roots=options.pop("roots", [pki.root]),
        intermediates=options.pop("intermediates", [pki.ca]),
        now=options.pop("now", NOW),
    )


# -- the certificate -------------------------------------------------------------------------


def test_a_genuine_ak_certificate_gives_the_identity_and_the_instance(cloud, ak_key, ak_public):
    certificate = cloud.issue(ak_key.public_key(), extension=encode_gce_instance(INSTANCE))
    der = certificate.public_bytes(serialization.Encoding.DER)
    validated = _validate(der + b"\xff" * 32, ak_public, cloud)  # NV padding is cut
    spki = ak_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert validated.identity == hashlib.sha256(spki).hexdigest()
    assert validated.identity == ak_identity(ak_public.public_key())
    assert validated.instance == INSTANCE
    assert validated.chain == (cloud.ca, cloud.root)


def test_an_ak_certificate_without_the_extension_has_no_instance(cloud, ak_key, ak_public):
    assert _validate(cloud.issue(ak_key.public_key()), ak_public, cloud).instance is None


def _refused(check: str, match: str, certificate, ak_public, pki, **options) -> None:
    with pytest.raises(AkCertificateInvalid, match=match) as raised:
        _validate(certificate, ak_public, pki, **options)
    assert raised.value.check == check
    assert isinstance(raised.value, EvidenceInvalid)


def test_an_unknown_root_is_refused(cloud, ak_key, ak_public):
    rogue = Pki("rogue")
    certificate = rogue.issue(ak_key.public_key())
    _refused("chain", "does not chain to a trusted AK CA", certificate, ak_public, cloud)
    # Its own issuing CA offered as an intermediate leads to a root that is not trusted.
    _refused(
        "chain", "trusted AK CA", certificate, ak_public, cloud, intermediates=[cloud.ca, rogue.ca]
    )


def test_a_certificate_chaining_only_to_an_ek_root_is_refused(vendor, cloud, ak_key, ak_public):
    """The EK vendor's CA is trusted for EKs; as an AK root it is not configured."""
    certificate = vendor.issue(ak_key.public_key())
    _refused(
        "chain", "trusted AK CA", certificate, ak_public, cloud, intermediates=[vendor.ca, cloud.ca]
    )


def test_a_certificate_for_another_key_is_refused(cloud, ak_public):
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    _refused("key", "different key than the AK", cloud.issue(other), ak_public, cloud)


def test_an_expired_or_not_yet_valid_certificate_is_refused(cloud, ak_key, ak_public):
    certificate = cloud.issue(ak_key.public_key())
    _refused("validity", "expired", certificate, ak_public, cloud, now=NOW + timedelta(days=2))
    _refused("validity", "not valid before", certificate, ak_public, cloud, now=NOW - timedelta(2))


@pytest.mark.parametrize(
    "attribute",
    [ObjectAttributes.RESTRICTED, ObjectAttributes.FIXED_TPM, ObjectAttributes.SIGN_ENCRYPT],
)
def test_an_ak_that_is_not_a_restricted_tpm_signing_key_is_refused(cloud, ak_key, attribute):
    public = ak_template(KeyKind.ECC).with_public_key(ak_key.public_key())
    weakened = replace(public, attributes=public.attributes & ~int(attribute))
    _refused("attestation-key", "AK lacks", cloud.issue(ak_key.public_key()), weakened, cloud)
    decrypting = replace(public, attributes=public.attributes | int(ObjectAttributes.DECRYPT))
    _refused("attestation-key", "decryption", cloud.issue(ak_key.public_key()), decrypting, cloud)


def test_leaf_rules(cloud, ak_key, ak_public):
    key = ak_key.public_key()
    _refused(
        "leaf",
        "lacks digitalSignature",
        cloud.issue(key, usage=_usage(encipher=True)),
        ak_public,
        cloud,
    )
    _refused("leaf", "no keyUsage", cloud.issue(key, usage=False), ak_public, cloud)  # type: ignore[arg-type]
    _refused("leaf", "is a CA", cloud.issue(key, ca=True), ak_public, cloud)
    ek_eku = cloud.issue(key, eku=[ObjectIdentifier("2.23.133.8.1")])
    _refused("leaf", "is an EK certificate", ek_eku, ak_public, cloud)
    _refused(
        "critical-extension", "1.2.3.4.5", cloud.issue(key, critical_extra=True), ak_public, cloud
    )


def test_no_ak_roots_refuses_everything(cloud, ak_key, ak_public):
    _refused(
        "chain", "no trusted AK CA", cloud.issue(ak_key.public_key()), ak_public, cloud, roots=[]
    )


def test_a_malformed_instance_extension_under_a_trusted_ca_is_a_typed_refusal(
    cloud, ak_key, ak_public
):
    certificate = cloud.issue(ak_key.public_key(), extension=b"\x30\x03\x0c\x01")
    _refused("instance", "instance identity extension", certificate, ak_public, cloud)


def test_bytes_that_are_no_certificate_are_an_evidence_error(cloud, ak_public):
    with pytest.raises(EvidenceError, match="AK certificate is not a readable"):
        _validate(b"\x30\x82\x00\x10not a certificate", ak_public, cloud)


# -- the instance identity extension --------------------------------------------------------


def test_the_instance_extension_round_trips():
    assert parse_gce_instance(encode_gce_instance(INSTANCE)) == INSTANCE
    bare = replace(INSTANCE, security_version=None, is_production=None)
    assert parse_gce_instance(encode_gce_instance(bare)) == bare
    only_production = replace(INSTANCE, security_version=None)
    assert parse_gce_instance(encode_gce_instance(only_production)) == only_production
    assert INSTANCE.to_json()["instance_name"] == "db-1"


def _tlv(tag: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([tag, len(body)]) + body


GOOD = encode_gce_instance(INSTANCE)
MALFORMED = {
    "empty": b"",
    "not a sequence": _tlv(0x04, b"abc"),
    "trailing bytes": GOOD + b"\x00",
    "truncated": GOOD[:-1],
    "indefinite length (BER)": b"\x30\x80" + GOOD[2:] + b"\x00\x00",
    "zone is not a UTF8String": _tlv(
        0x30,
        _tlv(0x02, b"\x01")
        + _tlv(0x02, b"\x01")
        + _tlv(0x0C, b"p")
        + _tlv(0x02, b"\x01")
        + _tlv(0x0C, b"n"),
    ),
    "missing instance name": _tlv(
        0x30, _tlv(0x0C, b"z") + _tlv(0x02, b"\x01") + _tlv(0x0C, b"p") + _tlv(0x02, b"\x01")
    ),
    "extra field": _tlv(
        0x30,
        _tlv(0x0C, b"z")
        + _tlv(0x02, b"\x01")
        + _tlv(0x0C, b"p")
        + _tlv(0x02, b"\x01")
        + _tlv(0x0C, b"n")
        + _tlv(0x0C, b"extra"),
    ),
    "invalid UTF-8": _tlv(
        0x30,
        _tlv(0x0C, b"\xff\xfe")
        + _tlv(0x02, b"\x01")
        + _tlv(0x0C, b"p")
        + _tlv(0x02, b"\x01")
        + _tlv(0x0C, b"n"),
    ),
    "non-minimal integer": _tlv(
        0x30,
        _tlv(0x0C, b"z")
        + _tlv(0x02, b"\x00\x01")
        + _tlv(0x0C, b"p")
        + _tlv(0x02, b"\x01")
        + _tlv(0x0C, b"n"),
    ),
    "negative instance id": _tlv(
        0x30,
        _tlv(0x0C, b"z")
        + _tlv(0x02, b"\x01")
        + _tlv(0x0C, b"p")
        + _tlv(0x02, b"\xff")
        + _tlv(0x0C, b"n"),
    ),
    "empty zone": _tlv(
        0x30,
        _tlv(0x0C, b"")
        + _tlv(0x02, b"\x01")
        + _tlv(0x0C, b"p")
        + _tlv(0x02, b"\x01")
        + _tlv(0x0C, b"n"),
    ),
    "empty security properties": _tlv(
        0x30,
        _tlv(0x0C, b"z")
        + _tlv(0x02, b"\x01")
        + _tlv(0x0C, b"p")
        + _tlv(0x02, b"\x01")
        + _tlv(0x0C, b"n")
        + _tlv(0xA0, _tlv(0x30, b"")),
    ),
    "BER boolean true": _tlv(
        0x30,
        _tlv(0x0C, b"z")
        + _tlv(0x02, b"\x01")
        + _tlv(0x0C, b"p")
        + _tlv(0x02, b"\x01")
        + _tlv(0x0C, b"n")
        + _tlv(0xA0, _tlv(0x30, _tlv(0xA1, _tlv(0x01, b"\x01")))),
    ),
    "oversized": b"\x30\x82\x20\x00" + b"\x00" * 0x2000,
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_instance_extensions_are_typed_errors(case):
    with pytest.raises(InstanceIdentityMalformed, match="instance identity extension") as raised:
        parse_gce_instance(MALFORMED[case])
    assert isinstance(raised.value, EvidenceError)


def test_every_truncation_and_bit_flip_is_parsed_or_a_typed_error():
    for length in range(len(GOOD)):
        with pytest.raises(InstanceIdentityMalformed):
            parse_gce_instance(GOOD[:length])
    for position in range(len(GOOD)):
        for bit in range(8):
            mutated = bytearray(GOOD)
            mutated[position] ^= 1 << bit
            try:
                parsed = parse_gce_instance(bytes(mutated))
            except InstanceIdentityMalformed:
                continue
            assert encode_gce_instance(parsed) == bytes(mutated)  # DER: one encoding


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_parsed_or_a_typed_error(data):
    try:
        parsed = parse_gce_instance(data)
    except InstanceIdentityMalformed:
        return
    assert encode_gce_instance(parsed) == data
