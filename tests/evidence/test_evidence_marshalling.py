"""Round trips of the TPM wire structures, byte layouts written out by hand, object Names
checked with hashlib, and known answers from a real TPM (swtpm + tpm2-tools)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace

import pytest
import vectors
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.evidence import EvidenceError, MalformedStructure, UnsupportedAlgorithm
from stockade.evidence.algorithms import Alg, EccCurve
from stockade.evidence.attest import (
    TPM_GENERATED_VALUE,
    Attest,
    AttestType,
    CertifyInfo,
    ClockInfo,
    QuoteInfo,
    RawAttested,
)
from stockade.evidence.pcr_selection import BankSelection, PcrSelection
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
from stockade.evidence.signature import EcdsaSignature, RsaSignature, Signature


def u16(value: int) -> bytes:
    return struct.pack(">H", value)


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def b2(data: bytes) -> bytes:
    return u16(len(data)) + data


POLICY = hashlib.sha256(b"some policy").digest()
MODULUS = bytes(range(1, 129)) * 2  # 256 bytes
ECC_X = bytes(range(32))
ECC_Y = bytes(range(32, 64))
KEYED_UNIQUE = hashlib.sha256(b"keyedhash unique").digest()

# Each object with its TPMT_PUBLIC bytes written out field by field from Part 2, 12.2.
OBJECTS = {
    "rsa": (
        TpmPublic(
            type=Alg.RSA,
            name_alg=Alg.SHA256,
            attributes=0x00050072,
            auth_policy=b"",
            parameters=RsaParameters(
                SymmetricDefinition(), Scheme(Alg.RSASSA, Alg.SHA256), 2048, 0
            ),
            unique=MODULUS,
        ),
        u16(0x0001)
        + u16(0x000B)
        + u32(0x00050072)
        + b2(b"")
        + u16(0x0010)  # symmetric NULL
        + u16(0x0014)
        + u16(0x000B)  # RSASSA / SHA256
        + u16(2048)
        + u32(0)
        + b2(MODULUS),
    ),
    "rsa-storage-exponent": (
        TpmPublic(
            type=Alg.RSA,
            name_alg=Alg.SHA384,
            attributes=0x00030072,
            auth_policy=POLICY,
            parameters=RsaParameters(
                SymmetricDefinition(Alg.AES, 256, Alg.CFB), Scheme(Alg.OAEP, Alg.SHA384), 2048, 3
            ),
            unique=MODULUS,
        ),
        u16(0x0001)
        + u16(0x000C)
        + u32(0x00030072)
        + b2(POLICY)
        + u16(0x0006)
        + u16(256)
        + u16(0x0043)  # AES-256-CFB
        + u16(0x0017)
        + u16(0x000C)  # OAEP / SHA384
        + u16(2048)
        + u32(3)
        + b2(MODULUS),
    ),
    "ecc": (
        TpmPublic(
            type=Alg.ECC,
            name_alg=Alg.SHA256,
            attributes=0x000300B2,
            auth_policy=POLICY,
            parameters=EccParameters(
                SymmetricDefinition(Alg.AES, 128, Alg.CFB),
                Scheme(Alg.NULL),
                EccCurve.NIST_P256,
                Scheme(Alg.NULL),
            ),
            unique=EccPoint(ECC_X, ECC_Y),
        ),
        u16(0x0023)
        + u16(0x000B)
        + u32(0x000300B2)
        + b2(POLICY)
        + u16(0x0006)
        + u16(128)
        + u16(0x0043)
        + u16(0x0010)  # scheme NULL
        + u16(0x0003)  # NIST P-256
        + u16(0x0010)  # kdf NULL
        + b2(ECC_X)
        + b2(ECC_Y),
    ),
    "ecc-ecdaa-kdf": (
        TpmPublic(
            type=Alg.ECC,
            name_alg=Alg.SHA256,
            attributes=0x00050072,
            auth_policy=b"",
            parameters=EccParameters(
                SymmetricDefinition(),
                Scheme(Alg.ECDAA, Alg.SHA256, 7),
                EccCurve.NIST_P384,
                Scheme(Alg.KDF1_SP800_108, Alg.SHA256),
            ),
            unique=EccPoint(ECC_X + ECC_Y[:16], ECC_Y + ECC_X[:16]),
        ),
        u16(0x0023)
        + u16(0x000B)
        + u32(0x00050072)
        + b2(b"")
        + u16(0x0010)
        + u16(0x001A)
        + u16(0x000B)
        + u16(7)  # ECDAA / SHA256 / count
        + u16(0x0004)  # NIST P-384
        + u16(0x0022)
        + u16(0x000B)  # KDF1_SP800_108 / SHA256
        + b2(ECC_X + ECC_Y[:16])
        + b2(ECC_Y + ECC_X[:16]),
    ),
    "keyedhash-hmac": (
        TpmPublic(
            type=Alg.KEYEDHASH,
            name_alg=Alg.SHA256,
            attributes=0x00040072,
            auth_policy=b"",
            parameters=KeyedHashParameters(Scheme(Alg.HMAC, Alg.SHA256)),
            unique=KEYED_UNIQUE,
        ),
        u16(0x0008)
        + u16(0x000B)
        + u32(0x00040072)
        + b2(b"")
        + u16(0x0005)
        + u16(0x000B)  # HMAC / SHA256
        + b2(KEYED_UNIQUE),
    ),
    "keyedhash-xor": (
        TpmPublic(
            type=Alg.KEYEDHASH,
            name_alg=Alg.SHA1,
            attributes=0x00020072,
            auth_policy=b"",
            parameters=KeyedHashParameters(Scheme(Alg.XOR, Alg.SHA256, Alg.KDF1_SP800_108)),
            unique=KEYED_UNIQUE[:20],
        ),
        u16(0x0008)
        + u16(0x0004)
        + u32(0x00020072)
        + b2(b"")
        + u16(0x000A)
        + u16(0x000B)
        + u16(0x0022)  # XOR / SHA256 / KDF1_SP800_108
        + b2(KEYED_UNIQUE[:20]),
    ),
    "keyedhash-sealed": (
        TpmPublic(
            type=Alg.KEYEDHASH,
            name_alg=Alg.SHA256,
            attributes=0x00000052,
            auth_policy=POLICY,
            parameters=KeyedHashParameters(Scheme(Alg.NULL)),
            unique=KEYED_UNIQUE,
        ),
        u16(0x0008) + u16(0x000B) + u32(0x00000052) + b2(POLICY) + u16(0x0010) + b2(KEYED_UNIQUE),
    ),
    "symcipher": (
        TpmPublic(
            type=Alg.SYMCIPHER,
            name_alg=Alg.SHA512,
            attributes=0x00060072,
            auth_policy=b"",
            parameters=SymCipherParameters(SymmetricDefinition(Alg.AES, 256, Alg.CFB)),
            unique=KEYED_UNIQUE,
        ),
        u16(0x0025)
        + u16(0x000D)
        + u32(0x00060072)
        + b2(b"")
        + u16(0x0006)
        + u16(256)
        + u16(0x0043)
        + b2(KEYED_UNIQUE),
    ),
}


# -- TPMT_PUBLIC / TPM2B_PUBLIC -------------------------------------------------------


@pytest.mark.parametrize("kind", OBJECTS)
def test_tpmt_public_marshals_to_the_specified_layout(kind):
    public, wire = OBJECTS[kind]
    assert public.marshal() == wire


@pytest.mark.parametrize("kind", OBJECTS)
def test_tpmt_public_round_trips(kind):
    public, wire = OBJECTS[kind]
    parsed = TpmPublic.unmarshal(wire)
    assert parsed == public
    assert parsed.marshal() == wire


@pytest.mark.parametrize("kind", OBJECTS)
def test_tpm2b_public_round_trips(kind):
    public, wire = OBJECTS[kind]
    sized = public.marshal_tpm2b()
    assert sized == u16(len(wire)) + wire
    assert TpmPublic.unmarshal_tpm2b(sized) == public
    assert TpmPublic.unmarshal_tpm2b(sized).marshal_tpm2b() == sized


@pytest.mark.parametrize("kind", OBJECTS)
def test_object_name_is_name_alg_and_hash_of_tpmt_public(kind):
    public, wire = OBJECTS[kind]
    hash_name = {Alg.SHA1: "sha1", Alg.SHA256: "sha256", Alg.SHA384: "sha384", Alg.SHA512: "sha512"}
    expected = u16(public.name_alg) + hashlib.new(hash_name[Alg(public.name_alg)], wire).digest()
    assert public.name() == expected


def test_name_changes_with_every_field():
    public, _ = OBJECTS["rsa"]
    variants = [
        replace(public, attributes=public.attributes | ObjectAttributes.DECRYPT),
        replace(public, auth_policy=POLICY),
        replace(public, unique=MODULUS[:-1] + b"\x00"),
        replace(public, parameters=replace(public.parameters, exponent=3)),
    ]
    names = {public.name(), *(variant.name() for variant in variants)}
    assert len(names) == 1 + len(variants)


def test_real_ak_round_trips_and_has_the_name_tpm2_tools_printed():
    ak = TpmPublic.unmarshal_tpm2b(vectors.AK_PUB)
    assert ak.marshal_tpm2b() == vectors.AK_PUB
    assert ak.name() == vectors.AK_NAME
    # Independently: nameAlg || SHA-256 over the TPMT_PUBLIC inside the TPM2B.
    assert b"\x00\x0b" + hashlib.sha256(vectors.AK_PUB[2:]).digest() == vectors.AK_NAME
    assert ak.type == Alg.RSA
    assert ak.attributes == 0x00050072
    assert isinstance(ak.parameters, RsaParameters)
    assert ak.parameters.scheme == Scheme(Alg.RSASSA, Alg.SHA256)
    assert ak.parameters.key_bits == 2048
    assert ak.public_key().key_size == 2048
    assert ak.public_key().public_numbers().e == 65537


def test_real_ek_is_the_tcg_default_rsa_template(ek_templates):
    ek = TpmPublic.unmarshal_tpm2b(vectors.EK_PUB)
    assert ek.marshal_tpm2b() == vectors.EK_PUB
    assert ek.name() == b"\x00\x0b" + hashlib.sha256(vectors.EK_PUB[2:]).digest()
    # Everything but the key itself is the template written down from the EK profile.
    assert replace(ek_templates.rsa, unique=ek.unique) == ek
    assert ek.has(ObjectAttributes.RESTRICTED)
    assert ek.has(ObjectAttributes.DECRYPT)
    assert not ek.has(ObjectAttributes.SIGN_ENCRYPT)


def test_with_public_key_fills_in_the_template(ek_templates, rsa_ek_key, ecc_ek_key):
    rsa_ek = ek_templates.rsa.with_public_key(rsa_ek_key.public_key())
    assert rsa_ek.unique == rsa_ek_key.public_key().public_numbers().n.to_bytes(256, "big")
    assert rsa_ek.public_key().public_numbers() == rsa_ek_key.public_key().public_numbers()
    assert replace(rsa_ek, unique=bytes(256)) == ek_templates.rsa

    ecc_ek = ek_templates.ecc.with_public_key(ecc_ek_key.public_key())
    numbers = ecc_ek_key.public_key().public_numbers()
    assert ecc_ek.unique == EccPoint(numbers.x.to_bytes(32, "big"), numbers.y.to_bytes(32, "big"))
    assert ecc_ek.public_key().public_numbers() == numbers
    assert TpmPublic.unmarshal_tpm2b(ecc_ek.marshal_tpm2b()) == ecc_ek


def test_with_public_key_refuses_a_key_of_another_type_or_curve(ek_templates, rsa_ek_key):
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(EvidenceError):
        ek_templates.ecc.with_public_key(rsa_ek_key.public_key())
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(EvidenceError, match="secp384r1"):
        ek_templates.ecc.with_public_key(p384)


def test_ecc_coordinates_shorter_than_the_curve_are_left_padded():
    public, _ = OBJECTS["ecc"]
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.derive_private_key(12345, ec.SECP256R1()).public_key()
    numbers = key.public_numbers()
    x = numbers.x.to_bytes(32, "big").lstrip(b"\0")
    y = numbers.y.to_bytes(32, "big").lstrip(b"\0")
    assert replace(public, unique=EccPoint(x, y)).public_key().public_numbers() == numbers


@pytest.mark.parametrize(
    ("wire", "error", "offset"),
    [
        (OBJECTS["rsa"][1][:-1], MalformedStructure, 24),  # modulus one byte short
        (OBJECTS["rsa"][1] + b"\x00", MalformedStructure, len(OBJECTS["rsa"][1])),
        (b"\x00", MalformedStructure, 0),
        (u16(0x0099) + OBJECTS["rsa"][1][2:], UnsupportedAlgorithm, None),  # object type
        (OBJECTS["rsa"][1][:2] + u16(0x0099) + OBJECTS["rsa"][1][4:], UnsupportedAlgorithm, None),
        # authPolicy size 65 > sizeof(TPMU_HA)
        (
            OBJECTS["rsa"][1][:8] + u16(65) + bytes(65) + OBJECTS["rsa"][1][10:],
            MalformedStructure,
            10,
        ),
        # symmetric XOR is not an object's symmetric algorithm
        (OBJECTS["rsa"][1][:10] + u16(0x000A) + OBJECTS["rsa"][1][12:], UnsupportedAlgorithm, None),
    ],
)
def test_tpmt_public_rejects_malformed_bytes(wire, error, offset):
    with pytest.raises(error) as caught:
        TpmPublic.unmarshal(wire)
    if offset is not None:
        assert caught.value.offset == offset
        assert caught.value.structure.startswith("TPM")


def test_tpm2b_public_size_must_match():
    with pytest.raises(MalformedStructure, match="size field says 280 bytes but 281 follow"):
        TpmPublic.unmarshal_tpm2b(vectors.AK_PUB + b"\x00")
    with pytest.raises(MalformedStructure):
        TpmPublic.unmarshal_tpm2b(vectors.AK_PUB[:-1])
    with pytest.raises(MalformedStructure):
        TpmPublic.unmarshal_tpm2b(b"\x00")


def test_keyed_hash_object_has_no_asymmetric_key():
    public, _ = OBJECTS["keyedhash-hmac"]
    with pytest.raises(EvidenceError, match="no asymmetric public key"):
        public.public_key()


def test_invalid_key_material_is_an_evidence_error():
    rsa_public, _ = OBJECTS["rsa"]
    with pytest.raises(EvidenceError):
        replace(rsa_public, parameters=replace(rsa_public.parameters, exponent=4)).public_key()
    ecc_public, _ = OBJECTS["ecc"]  # (0..31, 32..63) is not a point on P-256
    with pytest.raises(EvidenceError, match="invalid public key"):
        ecc_public.public_key()


# -- TPMS_ATTEST ----------------------------------------------------------------------

SELECTION = PcrSelection.parse("sha256:0,1,2,7+sha1:0")
CLOCK = ClockInfo(clock=0x0102030405060708, reset_count=5, restart_count=1, safe=False)
SIGNER = b"\x00\x0b" + hashlib.sha256(b"signer").digest()
PCR_DIGEST = hashlib.sha256(b"pcr digest").digest()


def attest_header(attest_type: int, extra: bytes = b"\xab\xcd") -> bytes:
    return (
        u32(0xFF544347)
        + u16(attest_type)
        + b2(SIGNER)
        + b2(extra)
        + struct.pack(">QIIB", 0x0102030405060708, 5, 1, 0)
        + struct.pack(">Q", 0x1122334455667788)
    )


ATTESTS = {
    "quote": (
        Attest(
            TPM_GENERATED_VALUE,
            AttestType.QUOTE,
            SIGNER,
            b"\xab\xcd",
            CLOCK,
            0x1122334455667788,
            QuoteInfo(SELECTION, PCR_DIGEST),
        ),
        attest_header(0x8018)
        + u32(2)
        + u16(0x000B)
        + b"\x03\x87\x00\x00"
        + u16(0x0004)
        + b"\x03\x01\x00\x00"
        + b2(PCR_DIGEST),
    ),
    "certify": (
        Attest(
            TPM_GENERATED_VALUE,
            AttestType.CERTIFY,
            SIGNER,
            b"\xab\xcd",
            CLOCK,
            0x1122334455667788,
            CertifyInfo(vectors.AK_NAME, b"\x00\x0b" + bytes(32)),
        ),
        attest_header(0x8017) + b2(vectors.AK_NAME) + b2(b"\x00\x0b" + bytes(32)),
    ),
    "time (raw body)": (
        Attest(
            TPM_GENERATED_VALUE,
            AttestType.TIME,
            SIGNER,
            b"\xab\xcd",
            CLOCK,
            0x1122334455667788,
            RawAttested(struct.pack(">QQIIB", 99, 98, 5, 1, 1) + struct.pack(">Q", 7)),
        ),
        attest_header(0x8019) + struct.pack(">QQIIB", 99, 98, 5, 1, 1) + struct.pack(">Q", 7),
    ),
    "unknown type (raw body)": (
        Attest(
            TPM_GENERATED_VALUE, 0x8099, SIGNER, b"", CLOCK, 0x1122334455667788, RawAttested(b"")
        ),
        attest_header(0x8099, b""),
    ),
}


@pytest.mark.parametrize("kind", ATTESTS)
def test_tpms_attest_marshals_to_the_specified_layout(kind):
    attest, wire = ATTESTS[kind]
    assert attest.marshal() == wire


@pytest.mark.parametrize("kind", ATTESTS)
def test_tpms_attest_round_trips(kind):
    attest, wire = ATTESTS[kind]
    parsed = Attest.unmarshal(wire)
    assert parsed == attest
    assert parsed.marshal() == wire


def test_real_quote_message_decodes_field_by_field():
    attest = Attest.unmarshal(vectors.QUOTE_MSG)
    assert attest.marshal() == vectors.QUOTE_MSG
    assert attest.magic == TPM_GENERATED_VALUE
    assert attest.type == AttestType.QUOTE
    assert attest.extra_data == vectors.QUOTE_NONCE
    assert attest.qualified_signer[:2] == b"\x00\x0b"
    assert len(attest.qualified_signer) == 34
    assert attest.clock_info == ClockInfo(clock=3020, reset_count=1, restart_count=0, safe=True)
    assert isinstance(attest.attested, QuoteInfo)
    assert str(attest.attested.pcr_select) == vectors.QUOTE_SELECTION
    assert len(attest.attested.pcr_digest) == 32
    # The quoted PCRs are all zero on a fresh swtpm: check the digest independently.
    expected = hashlib.sha256(bytes(32) * 4 + bytes(20) * 2).digest()
    assert attest.attested.pcr_digest == expected


def test_attest_rejects_a_clock_safe_byte_that_is_not_yes_or_no():
    _, wire = ATTESTS["quote"]
    safe_at = 4 + 2 + 2 + len(SIGNER) + 2 + 2 + 8 + 4 + 4
    assert wire[safe_at] == 0
    bad = wire[:safe_at] + b"\x02" + wire[safe_at + 1 :]
    with pytest.raises(MalformedStructure, match="TPMI_YES_NO") as caught:
        Attest.unmarshal(bad)
    assert caught.value.offset == safe_at + 1


def test_attest_rejects_trailing_bytes_after_a_quote_body():
    _, wire = ATTESTS["quote"]
    with pytest.raises(MalformedStructure, match="1 unexpected trailing bytes") as caught:
        Attest.unmarshal(wire + b"\x00")
    assert caught.value.offset == len(wire)


def test_attest_rejects_oversized_extra_data():
    wire = attest_header(0x8018, bytes(67))
    with pytest.raises(MalformedStructure, match="exceeds the maximum 66"):
        Attest.unmarshal(wire)


# -- TPMT_SIGNATURE -------------------------------------------------------------------

RSA_SIG = bytes(range(256))
R = bytes(range(32))
S = bytes(range(100, 132))

SIGNATURES = {
    "rsassa": (
        Signature(RsaSignature(Alg.RSASSA, Alg.SHA256, RSA_SIG)),
        u16(0x0014) + u16(0x000B) + b2(RSA_SIG),
    ),
    "rsapss": (
        Signature(RsaSignature(Alg.RSAPSS, Alg.SHA384, RSA_SIG)),
        u16(0x0016) + u16(0x000C) + b2(RSA_SIG),
    ),
    "ecdsa": (
        Signature(EcdsaSignature(Alg.ECDSA, Alg.SHA256, R, S)),
        u16(0x0018) + u16(0x000B) + b2(R) + b2(S),
    ),
    "ecdsa-short-r": (
        Signature(EcdsaSignature(Alg.ECDSA, Alg.SHA512, R[1:], S)),
        u16(0x0018) + u16(0x000D) + b2(R[1:]) + b2(S),
    ),
}


@pytest.mark.parametrize("kind", SIGNATURES)
def test_tpmt_signature_layout_and_round_trip(kind):
    signature, wire = SIGNATURES[kind]
    assert signature.marshal() == wire
    parsed = Signature.unmarshal(wire)
    assert parsed == signature
    assert parsed.marshal() == wire


def test_real_quote_signature_decodes():
    signature = Signature.unmarshal(vectors.QUOTE_SIG)
    assert signature.marshal() == vectors.QUOTE_SIG
    assert signature.scheme == Alg.RSASSA
    assert signature.hash.alg == Alg.SHA256
    assert isinstance(signature.body, RsaSignature)
    assert len(signature.body.signature) == 256


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (u16(0x001C) + u16(0x000B) + b2(R) + b2(S), UnsupportedAlgorithm),  # ECSCHNORR
        (u16(0x0010), UnsupportedAlgorithm),  # TPM_ALG_NULL signature
        (u16(0x0014) + u16(0x0012) + b2(RSA_SIG), UnsupportedAlgorithm),  # SM3 hash
        (u16(0x0014) + u16(0x000B) + b2(RSA_SIG) + b"\x00", MalformedStructure),
        (u16(0x0014) + u16(0x000B) + u16(513) + bytes(513), MalformedStructure),
        (u16(0x0018) + u16(0x000B) + b2(R), MalformedStructure),
    ],
)
def test_tpmt_signature_rejects(wire, error):
    with pytest.raises(error):
        Signature.unmarshal(wire)


# -- TPML_PCR_SELECTION ---------------------------------------------------------------


def test_pcr_selection_layout_and_round_trip():
    selection = PcrSelection.parse("sha256:0,1,2,16+sha1:0,3")
    wire = u32(2) + u16(0x000B) + b"\x03\x07\x00\x01" + u16(0x0004) + b"\x03\x09\x00\x00"
    assert selection.marshal() == wire
    assert PcrSelection.unmarshal(wire) == selection
    assert PcrSelection.unmarshal(wire).marshal() == wire


def test_pcr_selection_keeps_size_of_select_and_empty_banks():
    wire = u32(3) + u16(0x000B) + b"\x04\x00\x00\x00\x80" + u16(0x0004) + b"\x00" + u16(0x000C)
    wire += b"\x01\x00"
    selection = PcrSelection.unmarshal(wire)
    assert selection.banks == (
        BankSelection(Alg.SHA256, (31,), 4),
        BankSelection(Alg.SHA1, (), 0),
        BankSelection(Alg.SHA384, (), 1),
    )
    assert selection.marshal() == wire
    assert selection.items() == [(Alg.SHA256, 31)]


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (u32(17) + bytes(17 * 6), MalformedStructure),
        (u32(1) + u16(0x0099) + b"\x03\x00\x00\x00", UnsupportedAlgorithm),
        (u32(1) + u16(0x000B) + b"\x05" + bytes(5), MalformedStructure),
        (u32(1) + u16(0x000B) + b"\x03\x00\x00", MalformedStructure),
        (u32(1) + u16(0x000B) + b"\x03\x00\x00\x00\x00", MalformedStructure),
        (b"\x00\x00\x00", MalformedStructure),
    ],
)
def test_pcr_selection_rejects(wire, error):
    with pytest.raises(error):
        PcrSelection.unmarshal(wire)


# -- property round trips -------------------------------------------------------------

KNOWN_BANKS = [Alg.SHA1, Alg.SHA256, Alg.SHA384, Alg.SHA512, Alg.SM3_256]


@st.composite
def bank_selections(draw):
    size = draw(st.integers(0, 4))
    bitmap = draw(st.binary(min_size=size, max_size=size))
    pcrs = tuple(i for i in range(size * 8) if bitmap[i // 8] >> (i % 8) & 1)
    return BankSelection(draw(st.sampled_from(KNOWN_BANKS)), pcrs, size)


selections = st.builds(PcrSelection, st.lists(bank_selections(), max_size=16).map(tuple))
clocks = st.builds(
    ClockInfo,
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.booleans(),
)
names = st.binary(max_size=66)


@st.composite
def attests(draw):
    body = draw(
        st.one_of(
            st.builds(QuoteInfo, selections, st.binary(max_size=64)),
            st.builds(CertifyInfo, names, names),
            st.builds(RawAttested, st.binary(max_size=80)),
        )
    )
    if isinstance(body, QuoteInfo):
        attest_type = AttestType.QUOTE
    elif isinstance(body, CertifyInfo):
        attest_type = AttestType.CERTIFY
    else:
        attest_type = draw(
            st.integers(0, 0xFFFF).filter(lambda t: t not in (AttestType.QUOTE, AttestType.CERTIFY))
        )
    return Attest(
        draw(st.integers(0, 2**32 - 1)),
        attest_type,
        draw(names),
        draw(st.binary(max_size=66)),
        draw(clocks),
        draw(st.integers(0, 2**64 - 1)),
        body,
    )


@settings(max_examples=200)
@given(selections)
def test_any_pcr_selection_round_trips(selection):
    wire = selection.marshal()
    assert PcrSelection.unmarshal(wire) == selection
    assert PcrSelection.unmarshal(wire).marshal() == wire


@settings(max_examples=200)
@given(attests())
def test_any_attest_round_trips(attest):
    wire = attest.marshal()
    assert Attest.unmarshal(wire) == attest
    assert Attest.unmarshal(wire).marshal() == wire


@settings(max_examples=100)
@given(
    st.sampled_from([Alg.RSASSA, Alg.RSAPSS]),
    st.sampled_from([Alg.SHA1, Alg.SHA256, Alg.SHA384, Alg.SHA512]),
    st.binary(max_size=512),
)
def test_any_rsa_signature_round_trips(scheme, hash_alg, raw):
    signature = Signature(RsaSignature(scheme, hash_alg, raw))
    assert Signature.unmarshal(signature.marshal()) == signature


@settings(max_examples=100)
@given(
    st.sampled_from([Alg.SHA1, Alg.SHA256, Alg.SHA384, Alg.SHA512]),
    st.binary(max_size=128),
    st.binary(max_size=128),
)
def test_any_ecdsa_signature_round_trips(hash_alg, r, s):
    signature = Signature(EcdsaSignature(Alg.ECDSA, hash_alg, r, s))
    assert Signature.unmarshal(signature.marshal()) == signature
