"""A node's identity is its EK (``stockade.evidence.ek_identity``): sha256 of the key's DER
SubjectPublicKeyInfo, and the public area must be one of the TCG EK Credential Profile
default templates (L-1, L-2, H-1 to H-4, H-6, H-7) with that key in it.

Real EKs come from a software TPM (swtpm); the template values are cross-checked against
tpm2-pytss's own copy of the TCG templates (``tpm2_pytss.internal.templates``), and the
identity against the SubjectPublicKeyInfo bytes cut out of the EK certificate's DER by hand.
Tests that need swtpm or tpm2-pytss skip without them; the rest run on software keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from stockade.evidence.algorithms import Alg, EccCurve
from stockade.evidence.ek_identity import (
    TEMPLATES,
    EkTemplateInvalid,
    check_ek_template,
    ek_identity,
)
from stockade.evidence.errors import EvidenceError
from stockade.evidence.public import (
    EccParameters,
    EccPoint,
    KeyedHashParameters,
    ObjectAttributes,
    RsaParameters,
    Scheme,
    SymCipherParameters,
    SymmetricDefinition,
    TpmPublic,
)

# Written down from the TCG EK Credential Profile 2.0 (B.3.3, B.3.4, B.4), not from the code.
LOW_ATTRIBUTES = 0x000300B2  # fixedTPM fixedParent sensitiveDataOrigin adminWithPolicy
#                              restricted decrypt
HIGH_ATTRIBUTES = 0x000300F2  # the same with userWithAuth
POLICY_A_SHA256 = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
POLICY_B_SHA256 = bytes.fromhex("ca3d0a99a2b93906f7a3342414efcfb3a385d44cd1fd459089d19b5071c0b7a0")
ANOTHER_POLICY = hashlib.sha256(b"PolicyPassword, say").digest()
AES128_CFB = SymmetricDefinition(Alg.AES, 128, Alg.CFB)
AES256_CFB = SymmetricDefinition(Alg.AES, 256, Alg.CFB)
SUPPORTED = ["L-1", "L-2", "H-1", "H-2", "H-3", "H-4", "H-6", "H-7"]
CURVES = {
    EccCurve.NIST_P256: ec.SECP256R1(),
    EccCurve.NIST_P384: ec.SECP384R1(),
    EccCurve.NIST_P521: ec.SECP521R1(),
}


# -- helpers ---------------------------------------------------------------------------------


def _der_element(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, content start, end) of the DER element at ``offset`` (X.690, 8.1)."""
    tag, length, start = data[offset], data[offset + 1], offset + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(data[start : start + count], "big")
        start += count
    return tag, start, start + length


def spki_of_certificate(der: bytes) -> bytes:
    """The subjectPublicKeyInfo element, byte for byte, of an X.509 certificate (RFC 5280,
    4.1): Certificate -> tbsCertificate -> [version] serial signature issuer validity
    subject subjectPublicKeyInfo."""
    _, certificate, _ = _der_element(der, 0)
    _, offset, _ = _der_element(der, certificate)
    tag, _, end = _der_element(der, offset)
    if tag == 0xA0:  # explicit version
        offset = end
    for _ in range(5):  # serial, signature, issuer, validity, subject
        _, _, offset = _der_element(der, offset)
    tag, _, end = _der_element(der, offset)
    assert tag == 0x30
    return der[offset:end]


def spki_sha256(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def refused(public: TpmPublic) -> str:
    with pytest.raises(EkTemplateInvalid) as caught:
        check_ek_template(public)
    assert isinstance(caught.value, EvidenceError)
    assert str(caught.value) == f"EK public area is not a TCG EK template: {caught.value.detail}"
    return caught.value.detail


def with_parameters(public: TpmPublic, **changes: object) -> TpmPublic:
    return replace(public, parameters=replace(public.parameters, **changes))


def key_for(public: TpmPublic) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    if isinstance(public.parameters, RsaParameters):
        return rsa.generate_private_key(65537, public.parameters.key_bits)
    assert isinstance(public.parameters, EccParameters)
    return ec.generate_private_key(CURVES[EccCurve(public.parameters.curve_id)])


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pytss():
    pytest.importorskip("tpm2_pytss", reason="tpm2-pytss (libtss2) is not installed")
    from tpm2_pytss.constants import ESYS_TR, TPMA_OBJECT
    from tpm2_pytss.internal.templates import ek_template
    from tpm2_pytss.types import TPM2B_PUBLIC

    from stockade.evidence.templates import KeyKind
    from stockade.tpm.ak import create_ak
    from stockade.tpm.device import Tpm
    from stockade.tpm.ek import read_endorsement

    def template(name: str) -> TpmPublic:
        """tpm2-pytss's copy of a TCG EK template, as a TpmPublic (unique empty or zero)."""
        return TpmPublic.unmarshal_tpm2b(bytes(ek_template.lookup(name).template.marshal()))

    return SimpleNamespace(
        ESYS_TR=ESYS_TR,
        TPMA_OBJECT=TPMA_OBJECT,
        TPM2B_PUBLIC=TPM2B_PUBLIC,
        ek_template=ek_template,
        template=template,
        KeyKind=KeyKind,
        Tpm=Tpm,
        create_ak=create_ak,
        read_endorsement=read_endorsement,
    )


@pytest.fixture(scope="module")
def tpm(shared_software_tpm, pytss):
    with pytss.Tpm(shared_software_tpm.tcti) as opened:
        yield opened


@pytest.fixture(scope="module")
def endorsements(tpm, pytss):
    """{"rsa": Endorsement, "ecc": Endorsement} of the swtpm."""
    return {kind.value: pytss.read_endorsement(tpm, kind) for kind in pytss.KeyKind}


def create_primary(tpm, pytss, template: TpmPublic, hierarchy) -> TpmPublic:
    """TPM2_CreatePrimary of ``template`` (flushed at once); its public area."""
    marshalled, _ = pytss.TPM2B_PUBLIC.unmarshal(template.marshal_tpm2b())
    handle, public, *_ = tpm.esys.create_primary(None, marshalled, hierarchy)
    tpm.esys.flush_context(handle)
    return TpmPublic.unmarshal_tpm2b(bytes(public.marshal()))


SOURCES = [
    pytest.param(("rsa", "swtpm"), marks=pytest.mark.swtpm, id="rsa-swtpm"),
    pytest.param(("ecc", "swtpm"), marks=pytest.mark.swtpm, id="ecc-swtpm"),
    pytest.param(("rsa", "software"), id="rsa-software"),
    pytest.param(("ecc", "software"), id="ecc-software"),
]


def load_ek(request: pytest.FixtureRequest, kind: str, source: str) -> TpmPublic:
    """An L-1 or L-2 EK public area: a real one from swtpm, or the template around a
    software key (conftest's templates, written from the profile)."""
    if source == "swtpm":
        return request.getfixturevalue("endorsements")[kind].public
    templates = request.getfixturevalue("ek_templates")
    if kind == "rsa":
        return templates.rsa.with_public_key(request.getfixturevalue("rsa_ek_key").public_key())
    return templates.ecc.with_public_key(request.getfixturevalue("ecc_ek_key").public_key())


@pytest.fixture(params=SOURCES)
def ek(request) -> TpmPublic:
    kind, source = request.param
    return load_ek(request, kind, source)


def low_name(public: TpmPublic) -> str:
    return "L-1" if public.type == Alg.RSA else "L-2"


# -- real EKs ---------------------------------------------------------------------------------


@pytest.mark.swtpm
@pytest.mark.parametrize(("kind", "name"), [("rsa", "L-1"), ("ecc", "L-2")])
def test_swtpm_eks_are_the_low_range_templates(endorsements, kind, name):
    public = endorsements[kind].public
    template = check_ek_template(public)
    assert template.name == name
    # what the profile says, field by field
    assert public.attributes == LOW_ATTRIBUTES
    assert public.auth_policy == POLICY_A_SHA256
    assert public.name_alg == Alg.SHA256
    assert public.parameters.symmetric == AES128_CFB
    if kind == "rsa":
        assert public.parameters.key_bits == 2048
        assert public.parameters.exponent == 0
        assert len(public.unique) == 256
    else:
        assert public.parameters.curve_id == EccCurve.NIST_P256
        assert len(public.unique.x) == len(public.unique.y) == 32


@pytest.mark.swtpm
@pytest.mark.parametrize("kind", ["rsa", "ecc"])
def test_identity_is_sha256_of_the_ek_certificate_spki(endorsements, kind):
    endorsement = endorsements[kind]
    assert endorsement.certificate is not None, "swtpm was provisioned with EK certificates"
    spki = spki_of_certificate(endorsement.certificate)
    identity = ek_identity(endorsement.public)
    assert identity == hashlib.sha256(spki).hexdigest()
    # the same through cryptography's parser
    certificate = x509.load_der_x509_certificate(endorsement.certificate)
    assert identity == spki_sha256(certificate.public_key())
    assert len(identity) == 64 and identity == identity.lower()
    int(identity, 16)


@pytest.mark.swtpm
def test_identities_of_the_two_eks_and_of_another_tpm_differ(
    endorsements, make_software_tpm, pytss
):
    ours = {ek_identity(endorsement.public) for endorsement in endorsements.values()}
    assert len(ours) == 2
    other = make_software_tpm()  # stopped by the fixture
    with pytss.Tpm(other.tcti) as tpm:
        theirs = {ek_identity(pytss.read_endorsement(tpm, kind).public) for kind in pytss.KeyKind}
    assert len(theirs) == 2
    assert not ours & theirs


@pytest.mark.swtpm
def test_identity_is_stable_across_reads(endorsements, tpm, pytss):
    for kind in pytss.KeyKind:
        again = pytss.read_endorsement(tpm, kind).public
        assert again == endorsements[kind.value].public
        assert ek_identity(again) == ek_identity(endorsements[kind.value].public)


# -- one key, re-encoded: the same identity, not a template ----------------------------------


def test_identity_is_the_spki_hash_not_the_name(ek):
    assert ek_identity(ek) == spki_sha256(ek.public_key())
    assert ek_identity(ek) != hashlib.sha256(ek.marshal()).hexdigest()
    assert ek_identity(ek) != ek.name()[2:].hex()


def test_the_ek_is_its_low_range_template(ek):
    assert check_ek_template(ek).name == low_name(ek)


RE_ENCODINGS = {
    # name: (transformation, fragment of the message naming the difference)
    "another-auth-policy": (
        lambda p: replace(p, auth_policy=ANOTHER_POLICY),
        f"authPolicy {ANOTHER_POLICY.hex()}",
    ),
    "empty-auth-policy": (lambda p: replace(p, auth_policy=b""), "authPolicy (empty)"),
    "policy-b-on-low-attributes": (
        lambda p: replace(p, auth_policy=POLICY_B_SHA256),
        f"authPolicy {POLICY_B_SHA256.hex()}",
    ),
    "user-with-auth": (
        lambda p: replace(p, attributes=p.attributes | ObjectAttributes.USER_WITH_AUTH),
        "objectAttributes 0x000300f2",
    ),
    "no-da": (
        lambda p: replace(p, attributes=p.attributes | ObjectAttributes.NO_DA),
        "objectAttributes 0x000304b2",
    ),
    "no-admin-with-policy": (
        lambda p: replace(p, attributes=p.attributes & ~ObjectAttributes.ADMIN_WITH_POLICY),
        "objectAttributes 0x00030032",
    ),
    "symmetric-aes256": (lambda p: with_parameters(p, symmetric=AES256_CFB), "symmetric"),
    "symmetric-aes128-cbc": (
        lambda p: with_parameters(p, symmetric=SymmetricDefinition(Alg.AES, 128, Alg.CBC)),
        "symmetric",
    ),
    "symmetric-null": (lambda p: with_parameters(p, symmetric=SymmetricDefinition()), "symmetric"),
    "name-alg-sha384": (lambda p: replace(p, name_alg=Alg.SHA384), "nameAlg 0x000c"),
    "name-alg-sha1": (lambda p: replace(p, name_alg=Alg.SHA1), "nameAlg 0x0004"),
    "name-alg-and-symmetric": (
        lambda p: with_parameters(replace(p, name_alg=Alg.SHA512), symmetric=AES256_CFB),
        "nameAlg 0x000d, symmetric",
    ),
}
RSA_RE_ENCODINGS = {
    "exponent-65537": (
        lambda p: with_parameters(p, exponent=65537),
        "exponent 65537 (the template says 0)",
    ),
    "scheme-oaep": (lambda p: with_parameters(p, scheme=Scheme(Alg.OAEP, Alg.SHA256)), "scheme"),
    "scheme-rsaes": (lambda p: with_parameters(p, scheme=Scheme(Alg.RSAES)), "scheme"),
}
ECC_RE_ENCODINGS = {
    "scheme-ecdh": (lambda p: with_parameters(p, scheme=Scheme(Alg.ECDH, Alg.SHA256)), "scheme"),
    "kdf-sp800-56a": (
        lambda p: with_parameters(p, kdf=Scheme(Alg.KDF1_SP800_56A, Alg.SHA256)),
        "kdf",
    ),
}


RE_ENCODING_CASES = [
    pytest.param(
        *source.values[0],
        variant,
        marks=source.marks,
        id=f"{source.id}-{variant}",
    )
    for source in SOURCES
    for variant in [
        *RE_ENCODINGS,
        *(RSA_RE_ENCODINGS if source.values[0][0] == "rsa" else ECC_RE_ENCODINGS),
    ]
]


@pytest.mark.parametrize(("kind", "source", "variant"), RE_ENCODING_CASES)
def test_re_encoded_key_has_the_same_identity_but_is_no_template(request, kind, source, variant):
    ek = load_ek(request, kind, source)
    transform, fragment = {**RE_ENCODINGS, **RSA_RE_ENCODINGS, **ECC_RE_ENCODINGS}[variant]
    other = transform(ek)
    assert other != ek
    assert other.name() != ek.name()  # another object to the TPM ...
    assert ek_identity(other) == ek_identity(ek)  # ... but the same key, so the same node
    detail = refused(other)
    assert detail == f"differs from {low_name(ek)} in {fragment}"


def test_rsa_exponent_65537_written_out_is_the_same_key(ek_templates, rsa_ek_key):
    zero = ek_templates.rsa.with_public_key(rsa_ek_key.public_key())
    spelt_out = with_parameters(zero, exponent=65537)
    assert zero.parameters.exponent == 0
    assert zero.public_key().public_numbers() == spelt_out.public_key().public_numbers()
    assert ek_identity(zero) == ek_identity(spelt_out) == spki_sha256(rsa_ek_key.public_key())
    assert "exponent 65537" in refused(spelt_out)


def test_another_exponent_is_another_key_and_no_template(ek_templates, rsa_ek_key):
    zero = ek_templates.rsa.with_public_key(rsa_ek_key.public_key())
    three = with_parameters(zero, exponent=3)
    assert ek_identity(three) != ek_identity(zero)
    assert refused(three) == "differs from L-1 in exponent 3 (the template says 0)"


def test_rsa_modulus_of_another_length_is_named(ek_templates, rsa_ek_key):
    ek = ek_templates.rsa.with_public_key(rsa_ek_key.public_key())
    short = rsa.generate_private_key(65537, 2040).public_key()
    numbers = short.public_numbers()
    other = replace(ek, unique=numbers.n.to_bytes(255, "big"))
    assert refused(other) == "differs from L-1 in unique (modulus length)"


def test_ecc_key_on_another_curve_is_named(ek_templates):
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    numbers = key.public_numbers()
    other = replace(
        with_parameters(ek_templates.ecc, curve_id=EccCurve.NIST_P384),
        unique=EccPoint(numbers.x.to_bytes(48, "big"), numbers.y.to_bytes(48, "big")),
    )
    assert ek_identity(other) == spki_sha256(key)
    assert refused(other) == "differs from L-2 in curveID 0x0004"


def test_ecc_coordinates_without_leading_zeros_are_the_same_key_and_accepted(ek_templates):
    """The template check does not look at the coordinates' length: an x written without its
    leading zero byte is the same point, the same identity, and still L-2 (only the Name,
    the hash of the exact bytes, changes)."""
    for _ in range(10_000):
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        if key.public_numbers().x < 1 << 248:
            break
    else:
        pytest.fail("no P-256 key with a leading zero byte in x in 10000 tries")
    padded = ek_templates.ecc.with_public_key(key)
    assert padded.unique.x[0] == 0
    unpadded = replace(padded, unique=EccPoint(padded.unique.x.lstrip(b"\0"), padded.unique.y))
    assert len(unpadded.unique.x) < 32
    assert ek_identity(unpadded) == ek_identity(padded) == spki_sha256(key)
    assert check_ek_template(unpadded).name == "L-2"
    assert unpadded.name() != padded.name()


# -- the templates themselves ------------------------------------------------------------------


def test_template_table_is_what_the_profile_lists():
    assert [template.name for template in TEMPLATES] == SUPPORTED
    low = [template for template in TEMPLATES if template.name.startswith("L-")]
    high = [template for template in TEMPLATES if template.name.startswith("H-")]
    assert all(t.attributes == LOW_ATTRIBUTES and t.auth_policy == POLICY_A_SHA256 for t in low)
    assert all(t.attributes == HIGH_ATTRIBUTES for t in high)


@pytest.mark.parametrize("name", SUPPORTED)
def test_template_table_matches_tpm2_pytss(pytss, name):
    """An independent copy of the TCG templates: every field the check compares."""
    (ours,) = [template for template in TEMPLATES if template.name == name]
    theirs = pytss.template(name)
    assert (ours.type, ours.name_alg, ours.attributes, ours.auth_policy) == (
        theirs.type,
        theirs.name_alg,
        theirs.attributes,
        theirs.auth_policy,
    )
    assert ours.symmetric == theirs.parameters.symmetric
    assert theirs.parameters.scheme == Scheme(Alg.NULL)
    if isinstance(theirs.parameters, RsaParameters):
        assert (ours.key_bits, theirs.parameters.exponent) == (theirs.parameters.key_bits, 0)
    else:
        assert ours.curve == theirs.parameters.curve_id
        assert theirs.parameters.kdf == Scheme(Alg.NULL)


@pytest.fixture(scope="module")
def template_keys():
    """key(name, template): one software key per template, made once (RSA 3072 and 4096
    take a while)."""
    made: dict[str, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey] = {}

    def key(name: str, template: TpmPublic) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        if name not in made:
            made[name] = key_for(template)
        return made[name]

    return key


@pytest.mark.parametrize("name", SUPPORTED)
def test_tpm2_pytss_templates_with_a_key_filled_in_are_accepted(pytss, template_keys, name):
    template = pytss.template(name)
    key = template_keys(name, template)
    public = template.with_public_key(key.public_key())
    assert check_ek_template(public).name == name
    assert ek_identity(public) == spki_sha256(key.public_key())


@pytest.mark.swtpm
@pytest.mark.parametrize("name", ["H-1", "H-2", "H-3", "H-4", "H-6", "H-7"])
def test_high_range_eks_created_by_swtpm_are_accepted(tpm, pytss, name):
    """TPM2_CreatePrimary in the endorsement hierarchy from tpm2-pytss's template."""
    from tpm2_pytss import TSS2_Exception

    try:
        handle, public, *_ = tpm.esys.create_primary(
            None, pytss.ek_template.lookup(name).template, pytss.ESYS_TR.ENDORSEMENT
        )
    except TSS2_Exception as error:
        pytest.skip(f"this swtpm cannot create {name}: {error}")
    tpm.esys.flush_context(handle)
    created = TpmPublic.unmarshal_tpm2b(bytes(public.marshal()))
    assert check_ek_template(created).name == name
    assert ek_identity(created) == spki_sha256(created.public_key())
    # re-encoding the same key moves it off its template
    assert f"differs from {name} in authPolicy" in refused(replace(created, auth_policy=b""))


def test_h5_sm2_is_not_supported(pytss):
    """H-5 (SM2 P-256, SM3-256, SM4) is not among the accepted templates: its nameAlg is not
    even parsed, so such an EK public area never reaches the template check."""
    raw = bytes(pytss.ek_template.lookup("H-5").template.marshal())
    with pytest.raises(EvidenceError, match="0x0012"):
        TpmPublic.unmarshal_tpm2b(raw)


def test_high_range_template_with_low_range_attributes_is_named(pytss, template_keys):
    template = pytss.template("H-3")
    key = template_keys("H-3", template)
    public = replace(template.with_public_key(key.public_key()), attributes=LOW_ATTRIBUTES)
    assert refused(public) == "differs from H-3 in objectAttributes 0x000300b2"


# -- other keys are refused -------------------------------------------------------------------


@pytest.mark.swtpm
@pytest.mark.parametrize("kind", ["rsa", "ecc"])
def test_an_ak_is_refused(tpm, pytss, kind):
    ak = pytss.create_ak(tpm, pytss.KeyKind(kind))
    detail = refused(ak.public)
    name = "L-1" if kind == "rsa" else "L-2"
    assert detail.startswith(f"differs from {name} in objectAttributes 0x00050072")
    assert "authPolicy (empty)" in detail
    assert "symmetric" in detail and "scheme" in detail
    # its key still has an SPKI hash: it is just not an EK
    assert ek_identity(ak.public) == spki_sha256(ak.public.public_key())


@pytest.mark.swtpm
@pytest.mark.parametrize("algorithm", ["rsa2048:aes128cfb", "ecc256:aes128cfb"])
def test_a_storage_key_is_refused(tpm, pytss, algorithm):
    """A TCG-style SRK (restricted decrypt, userWithAuth, no policy) in the owner hierarchy:
    one attribute and the policy away from L-1/L-2."""
    attributes = (
        pytss.TPMA_OBJECT.FIXEDTPM
        | pytss.TPMA_OBJECT.FIXEDPARENT
        | pytss.TPMA_OBJECT.SENSITIVEDATAORIGIN
        | pytss.TPMA_OBJECT.USERWITHAUTH
        | pytss.TPMA_OBJECT.RESTRICTED
        | pytss.TPMA_OBJECT.DECRYPT
    )
    template = pytss.TPM2B_PUBLIC.parse(algorithm, objectAttributes=attributes)
    handle, public, *_ = tpm.esys.create_primary(None, template, pytss.ESYS_TR.OWNER)
    tpm.esys.flush_context(handle)
    srk = TpmPublic.unmarshal_tpm2b(bytes(public.marshal()))
    name = "L-1" if srk.type == Alg.RSA else "L-2"
    assert refused(srk) == f"differs from {name} in objectAttributes 0x00030072, authPolicy (empty)"


@pytest.mark.swtpm
def test_the_template_check_is_about_shape_not_provenance(tpm, pytss, endorsements):
    """The L-1 template created in the owner hierarchy is an L-1 public area with another key:
    the check accepts its shape; that it is not the EK is the EK certificate's to tell."""
    impostor = create_primary(tpm, pytss, pytss.template("L-1"), pytss.ESYS_TR.OWNER)
    assert check_ek_template(impostor).name == "L-1"
    assert ek_identity(impostor) != ek_identity(endorsements["rsa"].public)
    certificate = x509.load_der_x509_certificate(endorsements["rsa"].certificate)
    assert ek_identity(impostor) != spki_sha256(certificate.public_key())


def test_a_software_ak_is_refused(rsa_ak, ecc_ak):
    for ak, name in ((rsa_ak, "L-1"), (ecc_ak, "L-2")):
        assert refused(ak.public).startswith(f"differs from {name} in objectAttributes 0x00050072")


def test_keyedhash_object_is_refused(ek_templates):
    sealed = TpmPublic(
        type=Alg.KEYEDHASH,
        name_alg=Alg.SHA256,
        attributes=LOW_ATTRIBUTES,
        auth_policy=POLICY_A_SHA256,
        parameters=KeyedHashParameters(Scheme(Alg.NULL)),
        unique=hashlib.sha256(b"seed").digest(),
    )
    assert refused(sealed) == "object type 0x0008 is neither RSA nor ECC"
    hmac_key = replace(sealed, parameters=KeyedHashParameters(Scheme(Alg.HMAC, Alg.SHA256)))
    assert refused(hmac_key) == "object type 0x0008 is neither RSA nor ECC"
    with pytest.raises(EvidenceError, match="no asymmetric public key"):
        ek_identity(sealed)


def test_symcipher_object_is_refused():
    symcipher = TpmPublic(
        type=Alg.SYMCIPHER,
        name_alg=Alg.SHA256,
        attributes=LOW_ATTRIBUTES,
        auth_policy=POLICY_A_SHA256,
        parameters=SymCipherParameters(AES128_CFB),
        unique=bytes(32),
    )
    assert refused(symcipher) == "object type 0x0025 is neither RSA nor ECC"
    with pytest.raises(EvidenceError):
        ek_identity(symcipher)


def test_type_and_parameters_that_disagree_are_refused(ek_templates, ecc_ek_key):
    """Public areas whose type and parameters disagree (constructible only in memory)."""
    ecc = ek_templates.ecc.with_public_key(ecc_ek_key.public_key())
    assert refused(replace(ecc, type=Alg.RSA)).startswith("differs from L-1 in ")
    keyed = replace(ecc, type=Alg.RSA, parameters=KeyedHashParameters(Scheme(Alg.NULL)))
    assert refused(keyed) == "differs from L-1 in parameters"
