"""verify_certify: a TLS key is proven to live in the TPM that holds the node's AK.

The first half uses a real swtpm (TPM2_Certify by an AK made under the EK); each attack
is carried out for real and must be rejected with the check that catches it. The second
half forges what a TPM would never sign, with a software AK (``SoftAk`` from conftest),
and checks the node-key attribute rules one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from stockade.evidence.algorithms import Alg, EccCurve
from stockade.evidence.attest import (
    TPM_GENERATED_VALUE,
    Attest,
    AttestType,
    CertifyInfo,
    ClockInfo,
)
from stockade.evidence.certify import (
    CertifiedKey,
    CertifyRejected,
    check_node_key,
    verify_certify,
)
from stockade.evidence.errors import EvidenceError
from stockade.evidence.public import (
    EccParameters,
    EccPoint,
    ObjectAttributes,
    RsaParameters,
    Scheme,
    SymmetricDefinition,
    TpmPublic,
)
from stockade.evidence.signature import Signature

NONCE = bytes(range(32))


# -- the real TPM --------------------------------------------------------------------------


@dataclass
class Node:
    """One node's TPM: its AK and one TLS key, with a Tpm open on it."""

    tpm: object
    ak: object
    key: object
    modules: object


@pytest.fixture(scope="module")
def tpm_modules():
    pytest.importorskip("tpm2_pytss", reason="tpm2-pytss (libtss2) is not installed")
    from types import SimpleNamespace

    from stockade.evidence.templates import KeyKind
    from stockade.tpm.ak import create_ak, loaded_ak
    from stockade.tpm.device import Tpm
    from stockade.tpm.node_key import certify_node_key, create_node_key
    from stockade.tpm.quote import quote

    return SimpleNamespace(
        KeyKind=KeyKind,
        Tpm=Tpm,
        create_ak=create_ak,
        loaded_ak=loaded_ak,
        create_node_key=create_node_key,
        certify_node_key=certify_node_key,
        quote=quote,
    )


def open_node(software_tpm, modules, kind="ecc") -> Node:
    tpm = modules.Tpm(software_tpm.tcti)
    ak = modules.create_ak(tpm, modules.KeyKind(kind))
    return Node(tpm, ak, modules.create_node_key(tpm), modules)


@pytest.fixture(scope="module")
def node(shared_software_tpm, tpm_modules):
    node = open_node(shared_software_tpm, tpm_modules)
    yield node
    node.tpm.close()


@pytest.fixture(scope="module")
def certified(node):
    """(certify_info, signature) from TPM2_Certify of node.key by node.ak over NONCE."""
    return node.modules.certify_node_key(node.tpm, node.key, node.ak, NONCE)


@pytest.mark.swtpm
@pytest.mark.parametrize("kind", ["ecc", "rsa"])
def test_tpm_certified_key_is_accepted(software_tpm, tpm_modules, kind):
    node = open_node(software_tpm, tpm_modules, kind)
    with node.tpm:
        clock_before = node.tpm.read_clock()
        info, signature = tpm_modules.certify_node_key(node.tpm, node.key, node.ak, NONCE)
    proven = verify_certify(node.ak.public, node.key.public, info, signature, NONCE)
    assert isinstance(proven, CertifiedKey)
    assert proven.public == node.key.public
    assert proven.name == node.key.public.name()
    assert proven.clock.reset_count == clock_before.reset_count
    assert proven.clock.clock >= clock_before.clock
    assert proven.firmware_version == Attest.unmarshal(info).firmware_version


@pytest.mark.swtpm
def test_wrong_nonce_is_rejected(node, certified):
    """A certification made for an earlier request is not proof for this one."""
    info, signature = certified
    with pytest.raises(CertifyRejected) as caught:
        verify_certify(node.ak.public, node.key.public, info, signature, b"\x01" * 32)
    assert caught.value.check == "nonce"
    with pytest.raises(CertifyRejected) as caught:
        verify_certify(node.ak.public, node.key.public, info, signature, b"")
    assert caught.value.check == "nonce"


@pytest.mark.swtpm
def test_key_certified_by_another_nodes_ak_is_rejected(node, make_software_tpm, tpm_modules):
    """Node B, a machine the attacker controls, certifies its own key with its own AK and
    asks for a certificate in node A's name: A's AK never signed it."""
    with make_software_tpm() as other_tpm:
        other = open_node(other_tpm, tpm_modules)
        with other.tpm:
            info, signature = tpm_modules.certify_node_key(other.tpm, other.key, other.ak, NONCE)
    # Genuine for B ...
    verify_certify(other.ak.public, other.key.public, info, signature, NONCE)
    # ... worthless for A, whether B offers its own key or A's.
    for key in (other.key, node.key):
        with pytest.raises(CertifyRejected) as caught:
            verify_certify(node.ak.public, key.public, info, signature, NONCE)
        assert caught.value.check == "signature"


@pytest.mark.swtpm
def test_certification_of_a_different_key_is_rejected(node, tpm_modules):
    """The TPM certified key 2; the request offers key 1's public area (say, a software key
    dressed up as a TPM key would be): the certified Name does not match."""
    second = tpm_modules.create_node_key(node.tpm)
    info, signature = tpm_modules.certify_node_key(node.tpm, second, node.ak, NONCE)
    verify_certify(node.ak.public, second.public, info, signature, NONCE)
    with pytest.raises(CertifyRejected) as caught:
        verify_certify(node.ak.public, node.key.public, info, signature, NONCE)
    assert caught.value.check == "name"
    assert node.key.public.name().hex() in str(caught.value)


@pytest.mark.swtpm
def test_restricted_key_is_rejected_even_when_the_tpm_certified_it(node):
    """TPM2_Certify of the AK by itself is a genuine certification, but a restricted key
    must never become a TLS key."""
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
    from tpm2_pytss.types import TPMT_SIG_SCHEME

    with node.modules.loaded_ak(node.tpm, node.ak) as handle:
        attest, signature = node.tpm.esys.certify(
            handle,
            handle,
            NONCE,
            TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL),
            session1=ESYS_TR.PASSWORD,
            session2=ESYS_TR.PASSWORD,
        )
    info, sig = bytes(attest), bytes(signature.marshal())
    with pytest.raises(CertifyRejected) as caught:
        verify_certify(node.ak.public, node.ak.public, info, sig, NONCE)
    assert caught.value.check == "node-key"
    assert "restricted" in caught.value.detail
    assert node.tpm.transient_object_count() == 0


@pytest.mark.swtpm
def test_quote_presented_as_a_certification_is_rejected(node):
    """Same AK, same nonce, genuine TPM signature: but a quote, not a certification."""
    from stockade.evidence.pcr_selection import PcrSelection

    evidence = node.modules.quote(node.tpm, node.ak, PcrSelection.parse("sha256:0"), NONCE)
    with pytest.raises(CertifyRejected) as caught:
        verify_certify(node.ak.public, node.key.public, evidence.message, evidence.signature, NONCE)
    assert caught.value.check == "type"


def _flip(data: bytes, offset: int) -> bytes:
    body = bytearray(data)
    body[offset] ^= 0x01
    return bytes(body)


@pytest.mark.swtpm
@pytest.mark.parametrize(
    "where",
    ["magic", "nonce", "clock", "certified-name", "last-byte"],
)
def test_bit_flip_in_certify_info_is_rejected(node, certified, where):
    info, signature = certified
    attest = Attest.unmarshal(info)
    offsets = {
        "magic": 0,
        "nonce": info.index(NONCE) + 5,
        "clock": info.index(attest.clock_info.clock.to_bytes(8, "big")) + 7,
        "certified-name": info.index(node.key.public.name()) + 10,
        "last-byte": len(info) - 1,
    }
    with pytest.raises(CertifyRejected) as caught:
        verify_certify(
            node.ak.public, node.key.public, _flip(info, offsets[where]), signature, NONCE
        )
    assert caught.value.check == "signature"


@pytest.mark.swtpm
@pytest.mark.parametrize("offset", [0, 3, 7, 20, 40, -1])
def test_bit_flip_in_signature_is_rejected(node, certified, offset):
    """Anywhere: in sigAlg/hash (unusable structure) or in r/s (does not verify)."""
    info, signature = certified
    with pytest.raises(CertifyRejected) as caught:
        verify_certify(node.ak.public, node.key.public, info, _flip(signature, offset), NONCE)
    assert caught.value.check == "signature"


@pytest.mark.swtpm
def test_certify_leaves_nothing_loaded(node, certified):
    assert node.tpm.transient_object_count() == 0


# -- forged with a software AK ---------------------------------------------------------------


def node_key_template(**changes) -> TpmPublic:
    """What TSSPrivKey.create_ecc asks for (0x00040472), with a made-up point."""
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    template = TpmPublic(
        type=Alg.ECC,
        name_alg=Alg.SHA256,
        attributes=0x00040472,
        auth_policy=b"",
        parameters=EccParameters(
            SymmetricDefinition(), Scheme(Alg.NULL), EccCurve.NIST_P256, Scheme(Alg.NULL)
        ),
        unique=EccPoint(b"", b""),
    ).with_public_key(key.public_key())
    return replace(template, **changes)


def soft_certify(ak, key_public: TpmPublic, nonce: bytes = NONCE, **changes) -> tuple[bytes, bytes]:
    fields = {
        "magic": TPM_GENERATED_VALUE,
        "type": AttestType.CERTIFY,
        "qualified_signer": ak.public.name(),
        "extra_data": nonce,
        "clock_info": ClockInfo(5000, 3, 0, True),
        "firmware_version": 0x2011_0000_0000,
        "attested": CertifyInfo(key_public.name(), b"\x00\x0b" + bytes(32)),
    }
    sign_with = changes.pop("sign_with", {})
    fields.update(changes)
    message = Attest(**fields).marshal()
    return message, ak.sign(message, **sign_with).marshal()


@pytest.mark.parametrize("ak_name", ["ecc_ak", "rsa_ak", "rsa_pss_ak"])
def test_software_certification_in_each_scheme_verifies(request, ak_name):
    ak = request.getfixturevalue(ak_name)
    key = node_key_template()
    info, signature = soft_certify(ak, key)
    assert verify_certify(ak.public, key, info, signature, NONCE).name == key.name()


def test_not_tpm_generated_is_rejected(ecc_ak):
    """magic != TPM_GENERATED: these bytes were not made by TPM2_Certify."""
    key = node_key_template()
    info, signature = soft_certify(ecc_ak, key, magic=0x12345678)
    with pytest.raises(CertifyRejected) as caught:
        verify_certify(ecc_ak.public, key, info, signature, NONCE)
    assert caught.value.check == "magic"


def test_sha1_signature_is_refused(ecc_ak):
    """Even by an AK that fixes no scheme: SHA-1 collisions make a SHA-1 signature weak."""
    unrestricted_scheme = replace(
        ecc_ak.public, parameters=replace(ecc_ak.public.parameters, scheme=Scheme(Alg.NULL))
    )
    key = node_key_template()
    info, signature = soft_certify(ecc_ak, key, sign_with={"hash_alg": Alg.SHA1})
    with pytest.raises(CertifyRejected, match="sha1 signatures are not accepted") as caught:
        verify_certify(unrestricted_scheme, key, info, signature, NONCE)
    assert caught.value.check == "signature"


def test_signature_outside_the_aks_scheme_is_refused(ecc_ak):
    key = node_key_template()
    info, signature = soft_certify(ecc_ak, key, sign_with={"hash_alg": Alg.SHA384})
    with pytest.raises(CertifyRejected, match="restricted to") as caught:
        verify_certify(ecc_ak.public, key, info, signature, NONCE)
    assert caught.value.check == "signature"


def test_signer_that_is_not_an_attestation_key_is_refused(ecc_ak):
    """A key that signs anything could sign a forged TPMS_ATTEST: only restricted AKs count."""
    plain = replace(
        ecc_ak.public, attributes=ecc_ak.public.attributes & ~ObjectAttributes.RESTRICTED
    )
    key = node_key_template()
    info, signature = soft_certify(ecc_ak, key)
    with pytest.raises(CertifyRejected) as caught:
        verify_certify(plain, key, info, signature, NONCE)
    assert caught.value.check == "attestation-key"


def test_rejections_are_evidence_errors(ecc_ak):
    key = node_key_template()
    info, signature = soft_certify(ecc_ak, key)
    with pytest.raises(EvidenceError):
        verify_certify(ecc_ak.public, key, info, signature, b"other")


# -- what a TLS key must be ------------------------------------------------------------------


def test_the_key_tss_and_tpm2_openssl_create_is_a_node_key():
    check_node_key(node_key_template())


@pytest.mark.parametrize(
    ("attribute", "name"),
    [
        (ObjectAttributes.FIXED_TPM, "fixedTPM"),
        (ObjectAttributes.FIXED_PARENT, "fixedParent"),
        (ObjectAttributes.SENSITIVE_DATA_ORIGIN, "sensitiveDataOrigin"),
        (ObjectAttributes.USER_WITH_AUTH, "userWithAuth"),
        (ObjectAttributes.SIGN_ENCRYPT, "sign"),
    ],
)
def test_missing_required_attribute_is_named(attribute, name):
    key = node_key_template()
    with pytest.raises(CertifyRejected, match=f"lacks TPMA_OBJECT {name}$") as caught:
        check_node_key(replace(key, attributes=key.attributes & ~attribute))
    assert caught.value.check == "node-key"


@pytest.mark.parametrize(
    ("attribute", "name"),
    [(ObjectAttributes.RESTRICTED, "restricted"), (ObjectAttributes.DECRYPT, "decrypt")],
)
def test_forbidden_attribute_is_named(attribute, name):
    key = node_key_template()
    with pytest.raises(CertifyRejected, match=f"has TPMA_OBJECT {name},"):
        check_node_key(replace(key, attributes=key.attributes | attribute))


def test_weak_name_algorithm_is_refused():
    with pytest.raises(CertifyRejected, match="nameAlg 0x0004"):
        check_node_key(node_key_template(name_alg=Alg.SHA1))


def test_other_curves_are_refused():
    from cryptography.hazmat.primitives.asymmetric import ec

    p384 = TpmPublic(
        type=Alg.ECC,
        name_alg=Alg.SHA256,
        attributes=0x00040472,
        auth_policy=b"",
        parameters=EccParameters(
            SymmetricDefinition(), Scheme(Alg.NULL), EccCurve.NIST_P384, Scheme(Alg.NULL)
        ),
        unique=EccPoint(b"", b""),
    ).with_public_key(ec.generate_private_key(ec.SECP384R1()).public_key())
    with pytest.raises(CertifyRejected, match="not NIST P-256"):
        check_node_key(p384)


@pytest.mark.parametrize(("bits", "accepted"), [(1024, False), (2048, True), (3072, True)])
def test_rsa_keys_need_2048_bits(bits, accepted):
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(65537, bits)
    public = TpmPublic(
        type=Alg.RSA,
        name_alg=Alg.SHA256,
        attributes=0x00040472,
        auth_policy=b"",
        parameters=RsaParameters(SymmetricDefinition(), Scheme(Alg.NULL), bits, 0),
        unique=b"",
    ).with_public_key(key.public_key())
    if accepted:
        check_node_key(public)
    else:
        with pytest.raises(CertifyRejected, match="1024 bits"):
            check_node_key(public)


@pytest.mark.parametrize(
    ("scheme", "message"),
    [
        (Scheme(Alg.ECDSA, Alg.SHA1), "weaker than SHA-256"),
        (Scheme(Alg.ECDAA, Alg.SHA256, 0), "cannot sign a TLS handshake"),
    ],
)
def test_fixed_signing_scheme_must_suit_tls(scheme, message):
    key = node_key_template()
    with pytest.raises(CertifyRejected, match=message):
        check_node_key(replace(key, parameters=replace(key.parameters, scheme=scheme)))


def test_invalid_point_is_refused():
    key = node_key_template(unique=EccPoint(b"\x01" * 32, b"\x02" * 32))
    with pytest.raises(CertifyRejected, match="invalid public key"):
        check_node_key(key)


def test_signature_bytes_are_parsed_not_trusted(ecc_ak):
    key = node_key_template()
    info, signature = soft_certify(ecc_ak, key)
    for bad in (b"", signature + b"\x00", signature[:-1]):
        with pytest.raises(CertifyRejected) as caught:
            verify_certify(ecc_ak.public, key, info, bad, NONCE)
        assert caught.value.check == "signature"
    assert Signature.unmarshal(signature).scheme == Alg.ECDSA
