"""EK certificate paths under RFC 5280: pathLenConstraint (4.2.1.9, 6.1.4 (l), (m)) and
critical extensions the validator does not process (4.2: "MUST reject").

Each attack is a chain an attacker could present: a vendor CA that may only issue EK
certificates (pathLenConstraint 0) used to certify another CA, or a certificate whose
issuer restricted it with a critical extension Stockade would silently ignore. The
critical extensions real EK certificates carry (swtpm's, and those the TCG EK Credential
Profile describes) must still pass.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from stockade.evidence import EkCertificateInvalid, EvidenceError, validate_ek_certificate

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
TCG_KP_EK_CERTIFICATE = ObjectIdentifier("2.23.133.8.1")
PRIVATE_OID = ObjectIdentifier("1.3.6.1.4.1.55555.1.1")  # an arc nobody processes
TPM_MANUFACTURER = ObjectIdentifier("2.23.133.2.1")
TPM_MODEL = ObjectIdentifier("2.23.133.2.2")
TPM_VERSION = ObjectIdentifier("2.23.133.2.3")
SUBJECT_DIRECTORY_ATTRIBUTES = ObjectIdentifier("2.5.29.9")

Extension = tuple[x509.ExtensionType, bool]  # (value, critical)


def name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test TPM Vendor"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def usage(*, cert_sign: bool = False, encipher: bool = False, agree: bool = False, sign=False):
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=encipher,
        data_encipherment=False,
        key_agreement=agree,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class Ca:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def name(self) -> x509.Name:
        return self.certificate.subject


def build(
    subject: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    extensions: list[Extension],
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=30))
        .not_valid_after(NOW + timedelta(days=30))
    )
    for value, critical in extensions:
        builder = builder.add_extension(value, critical)
    return builder.sign(issuer_key, hashes.SHA256())


def ca_extensions(path_length: int | None) -> list[Extension]:
    return [
        (x509.BasicConstraints(ca=True, path_length=path_length), True),
        (usage(cert_sign=True), True),
    ]


def root(path_length: int | None = None, extra: list[Extension] | None = None) -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = name("Vendor Root CA")
    extensions = ca_extensions(path_length) + (extra or [])
    return Ca(build(subject, key.public_key(), subject, key, extensions), key)


def intermediate(
    common_name: str,
    issuer: Ca,
    path_length: int | None = None,
    extra: list[Extension] | None = None,
    *,
    subject: x509.Name | None = None,
) -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    extensions = ca_extensions(path_length) + (extra or [])
    certificate = build(
        subject or name(common_name), key.public_key(), issuer.name, issuer.key, extensions
    )
    return Ca(certificate, key)


def ek_extensions() -> list[Extension]:
    """What a TCG EK certificate carries (EK Credential Profile 2.0, 3.2; swtpm's)."""
    tpm = x509.Name(
        [
            x509.NameAttribute(TPM_MANUFACTURER, "id:00001014"),
            x509.NameAttribute(TPM_MODEL, "swtpm"),
            x509.NameAttribute(TPM_VERSION, "id:20191023"),
        ]
    )
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (usage(agree=True), True),
        (x509.SubjectAlternativeName([x509.DirectoryName(tpm)]), True),
        (x509.ExtendedKeyUsage([TCG_KP_EK_CERTIFICATE]), False),
        (x509.UnrecognizedExtension(SUBJECT_DIRECTORY_ATTRIBUTES, bytes.fromhex("3000")), False),
    ]


def ek(issuer: Ca, extra: list[Extension] | None = None, extensions: list[Extension] | None = None):
    """(EK certificate with an empty subject, the TPM's EK public area)."""
    key = ec.generate_private_key(ec.SECP256R1())
    chosen = (ek_extensions() if extensions is None else extensions) + (extra or [])
    certificate = build(x509.Name([]), key.public_key(), issuer.name, issuer.key, chosen)
    return certificate, key


def validate(leaf_and_key, ek_templates, anchor: Ca, *cas: Ca):
    leaf, key = leaf_and_key
    return validate_ek_certificate(
        leaf,
        ek_templates.ecc.with_public_key(key.public_key()),
        trusted_roots=[anchor.certificate],
        intermediates=[ca.certificate for ca in cas],
        now=NOW,
    )


def private(critical: bool) -> Extension:
    return x509.UnrecognizedExtension(PRIVATE_OID, b"\x05\x00"), critical


# -- pathLenConstraint ---------------------------------------------------------------------


def test_path_length_0_intermediate_above_another_intermediate_is_refused(ek_templates):
    """The vendor's EK-issuing CA may only sign EK certificates; its key signed a CA
    certificate for the attacker, who then issues "EK certificates" for any key."""
    anchor = root()
    issuing = intermediate("Vendor EK CA 01", anchor, path_length=0)
    rogue = intermediate("Attacker CA", issuing)
    with pytest.raises(EkCertificateInvalid) as refused:
        validate(ek(rogue), ek_templates, anchor, issuing, rogue)
    assert refused.value.check == "path-length"
    assert "Vendor EK CA 01" in refused.value.detail
    assert "pathLenConstraint 0" in refused.value.detail
    assert "1 intermediate CA certificate(s) below it" in refused.value.detail


def test_path_length_counts_every_intermediate_below_the_constrained_ca(ek_templates):
    anchor = root()
    top = intermediate("Vendor CA", anchor, path_length=1)
    middle = intermediate("Vendor Sub CA", top)
    bottom = intermediate("Attacker CA", middle)
    with pytest.raises(EkCertificateInvalid, match="pathLenConstraint 1, but the path has 2"):
        validate(ek(bottom), ek_templates, anchor, top, middle, bottom)
    within = intermediate("Vendor EK CA", top, path_length=0)
    validated = validate(ek(within), ek_templates, anchor, top, within)
    assert validated.chain == (within.certificate, top.certificate, anchor.certificate)


def test_the_trust_anchors_path_length_is_enforced_too(ek_templates):
    """As OpenSSL and Go do: a root that may only issue end-entity certificates."""
    anchor = root(path_length=0)
    issuing = intermediate("Vendor EK CA 01", anchor)
    with pytest.raises(EkCertificateInvalid) as refused:
        validate(ek(issuing), ek_templates, anchor, issuing)
    assert refused.value.check == "path-length"
    assert "Vendor Root CA" in refused.value.detail
    direct = validate(ek(anchor), ek_templates, anchor)
    assert direct.chain == (anchor.certificate,)


def test_self_issued_intermediates_do_not_count_against_path_length(ek_templates):
    """RFC 5280 6.1.4 (l): a CA's key rollover certificate (same name, new key, signed by
    the old key) is self-issued and does not use up the path length."""
    anchor = root()
    old = intermediate("Vendor EK CA 01", anchor, path_length=0)
    rolled = intermediate("Vendor EK CA 01", old, subject=old.name)
    assert rolled.certificate.subject == rolled.certificate.issuer
    validated = validate(ek(rolled), ek_templates, anchor, old, rolled)
    assert validated.chain == (rolled.certificate, old.certificate, anchor.certificate)


# -- critical extensions --------------------------------------------------------------------


def test_unknown_critical_extension_on_the_leaf_is_refused(ek_templates):
    anchor = root()
    issuing = intermediate("Vendor EK CA 01", anchor)
    with pytest.raises(EkCertificateInvalid) as refused:
        validate(ek(issuing, [private(critical=True)]), ek_templates, anchor, issuing)
    assert refused.value.check == "critical-extension"
    assert PRIVATE_OID.dotted_string in refused.value.detail
    assert "EK certificate '(empty subject)'" in refused.value.detail


def test_unknown_critical_extension_on_an_intermediate_is_refused(ek_templates):
    anchor = root()
    issuing = intermediate("Vendor EK CA 01", anchor, extra=[private(critical=True)])
    with pytest.raises(EkCertificateInvalid) as refused:
        validate(ek(issuing), ek_templates, anchor, issuing)
    assert refused.value.check == "critical-extension"
    assert PRIVATE_OID.dotted_string in refused.value.detail
    assert "issuer 'CN=Vendor EK CA 01,O=Test TPM Vendor'" in refused.value.detail


@pytest.mark.parametrize("where", ["leaf", "intermediate"])
def test_the_same_extension_non_critical_is_accepted(ek_templates, where):
    anchor = root()
    extra = [private(critical=False)]
    issuing = intermediate("Vendor EK CA 01", anchor, extra=extra if where != "leaf" else None)
    leaf = ek(issuing, extra if where == "leaf" else None)
    assert validate(leaf, ek_templates, anchor, issuing).certificate == leaf[0]


def test_the_trust_anchor_is_exempt_from_the_critical_extension_rule(ek_templates):
    """RFC 5280 6.1.1 (d): the trust anchor is an input the operator configured, not a
    certificate of the path; only its CA constraints are applied."""
    anchor = root(extra=[private(critical=True)])
    issuing = intermediate("Vendor EK CA 01", anchor)
    assert validate(ek(issuing), ek_templates, anchor, issuing).chain[-1] == anchor.certificate


@pytest.mark.parametrize(
    "extension",
    [
        x509.NameConstraints(
            permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None
        ),
        x509.PolicyConstraints(require_explicit_policy=0, inhibit_policy_mapping=None),
        x509.InhibitAnyPolicy(0),
        x509.ExtendedKeyUsage([TCG_KP_EK_CERTIFICATE]),
    ],
    ids=["name-constraints", "policy-constraints", "inhibit-any-policy", "eku-on-a-ca"],
)
def test_critical_extensions_known_to_cryptography_but_not_processed_are_refused(
    ek_templates, extension
):
    """Understood by the X.509 library is not processed by the validator: a CA
    constrained by any of these would be trusted beyond its constraints."""
    anchor = root()
    issuing = intermediate("Vendor EK CA 01", anchor, extra=[(extension, True)])
    with pytest.raises(EkCertificateInvalid) as refused:
        validate(ek(issuing), ek_templates, anchor, issuing)
    assert refused.value.check == "critical-extension"
    assert extension.oid.dotted_string in refused.value.detail


def test_the_recognised_extensions_are_listed():
    from stockade.evidence.ek_certificate import RECOGNISED_ON_CA, RECOGNISED_ON_LEAF

    assert {oid.dotted_string for oid in RECOGNISED_ON_CA} == {
        "2.5.29.19",  # basicConstraints
        "2.5.29.15",  # keyUsage
        "2.5.29.17",  # subjectAltName
        "2.5.29.32",  # certificatePolicies
    }
    leaf_only = {oid.dotted_string for oid in RECOGNISED_ON_LEAF - RECOGNISED_ON_CA}
    assert leaf_only == {"2.5.29.37"}  # extendedKeyUsage


def test_the_critical_extensions_real_ek_certificates_carry_are_accepted(ek_templates):
    """Critical basicConstraints, keyUsage and subjectAltName (empty subject) on the EK
    certificate; critical certificatePolicies on both (Intel's EK tooling marks it so);
    critical basicConstraints with path lengths and keyUsage on the CAs."""
    policies = (
        x509.CertificatePolicies(
            [x509.PolicyInformation(ObjectIdentifier("1.3.6.1.4.1.55555.2.1"), ["https://cps"])]
        ),
        True,
    )
    anchor = root(path_length=1)
    issuing = intermediate("Vendor EK CA 01", anchor, path_length=0, extra=[policies])
    leaf = ek(issuing, [policies])
    assert validate(leaf, ek_templates, anchor, issuing).certificate == leaf[0]


# -- the leaf's key usage (a recognised extension is a processed one) ----------------------------


@pytest.mark.parametrize(
    ("key_usage", "accepted"),
    [
        (usage(agree=True), True),  # ECC EK
        (usage(encipher=True), True),  # RSA EK
        (usage(sign=True), False),  # a signing key, not an EK
        (usage(cert_sign=True), False),
    ],
    ids=["keyAgreement", "keyEncipherment", "digitalSignature", "keyCertSign"],
)
def test_the_leafs_key_usage_must_allow_receiving_a_credential(ek_templates, key_usage, accepted):
    anchor = root()
    issuing = intermediate("Vendor EK CA 01", anchor)
    extensions = [e for e in ek_extensions() if not isinstance(e[0], x509.KeyUsage)]
    leaf = ek(issuing, [(key_usage, True)], extensions=extensions)
    if accepted:
        assert validate(leaf, ek_templates, anchor, issuing).certificate == leaf[0]
        return
    with pytest.raises(EkCertificateInvalid) as refused:
        validate(leaf, ek_templates, anchor, issuing)
    assert refused.value.check == "leaf"
    assert "neither keyEncipherment nor keyAgreement" in refused.value.detail


# -- malformed extensions are typed errors ---------------------------------------------------


def test_a_duplicated_extension_is_an_evidence_error(ek_templates):
    """RFC 5280 4.2: at most one instance of an extension. cryptography raises its own
    DuplicateExtension (not a ValueError), which must not escape as a traceback."""
    anchor = root()
    issuing = intermediate("Vendor EK CA 01", anchor)
    # a second extension whose OID differs from basicConstraints (2.5.29.19) in its
    # last byte only, renamed to it after signing
    crl_number = (x509.UnrecognizedExtension(ObjectIdentifier("2.5.29.20"), b"\x02\x01\x01"), False)
    leaf, key = ek(issuing, [crl_number])
    der = leaf.public_bytes(serialization.Encoding.DER)
    assert der.count(bytes.fromhex("0603551d14")) == 1
    forged = der.replace(bytes.fromhex("0603551d14"), bytes.fromhex("0603551d13"))
    with pytest.raises(EvidenceError, match="cannot be decoded"):
        validate((forged, key), ek_templates, anchor, issuing)


# -- the project's own EK CA and swtpm's certificates ---------------------------------------------


@pytest.mark.swtpm
@pytest.mark.skipif(shutil.which("swtpm_localca") is None, reason="swtpm_localca not installed")
@pytest.mark.parametrize("curve", [None, ec.SECP256R1()], ids=["rsa", "ecc-p256"])
def test_ek_certificates_from_the_dev_ek_ca_are_accepted(tmp_path, ek_templates, curve):
    """swtpm_localca's EK certificates (critical subjectAltName, keyUsage and
    basicConstraints) under the dev EK CA (root pathLenConstraint 1, issuer 0)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from stockade.tpm.ekca import EkCa

    ca = EkCa.load_or_create(tmp_path / "ek-ca")
    if curve is None:
        key = rsa.generate_private_key(65537, 2048).public_key()
        public = ek_templates.rsa.with_public_key(key)
    else:
        key = ec.generate_private_key(curve).public_key()
        public = ek_templates.ecc.with_public_key(key)
    certificate = ca.issue_ek_certificate(key)
    critical = {e.oid.dotted_string for e in certificate.extensions if e.critical}
    assert critical == {"2.5.29.17", "2.5.29.15", "2.5.29.19"}
    validated = validate_ek_certificate(
        certificate,
        public,
        trusted_roots=ca.trusted_roots(),
        intermediates=ca.intermediates(),
        now=datetime.now(UTC),
    )
    assert validated.chain == (ca.issuer_certificate(), ca.root_certificate())
