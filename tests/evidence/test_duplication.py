"""Sealed secrets (software duplication for TPM2_Import), checked by a software
TPM2_Import written from the specification.

``reference_import`` does what TPM2_Import then TPM2_Load then TPM2_Unseal do with the
blob (Part 1, 23.3.2.3 outer wrapper; Part 3, 13.3): recover the seed with the EK
private key (RSA-OAEP label "DUPLICATE\\0", or ECDH + KDFe "DUPLICATE"), check the outer
HMAC over dupSensitive || Name, decrypt with AES-CFB keyed by KDFa(seed, "STORAGE", Name),
unwrap TPM2B_SENSITIVE and check the keyed-hash unique binding. It uses the spec
transcriptions of KDFa/KDFe in conftest.py, not stockade.evidence.kdf. The real TPM does
the same in tests/tpm/test_sealed_secrets.py.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import random
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.evidence import EvidenceError, PcrSelection, PcrValues, TpmPublic
from stockade.evidence.algorithms import Alg
from stockade.evidence.duplication import (
    MAX_PAYLOAD_BYTES,
    SealedSecret,
    SealingError,
    open_payload,
    seal_secret,
)
from stockade.evidence.marshal import tpm2b
from stockade.evidence.pcr_selection import BankSelection
from stockade.evidence.policy_digest import (
    TPM_CC_UNSEAL,
    UNSEAL_POLICY_REF,
    policy_command_code,
    policy_pcr,
    unseal_policy,
)
from stockade.evidence.public import ObjectAttributes, SymmetricDefinition

SELECTION = PcrSelection.parse("sha256:0,1,2,3,7,12")
# The Name of the node's channel key (nameAlg SHA-256 || digest of its TPMT_PUBLIC).
NAME = struct.pack(">H", Alg.SHA256) + hashlib.sha256(b"the channel key's public area").digest()
OTHER_NAME = struct.pack(">H", Alg.SHA256) + hashlib.sha256(b"another key").digest()
FUZZ_TARGET = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_sealed_secret.py"


class ImportRefused(Exception):
    """The reference import's integrity or structure check failed (TPM_RC_INTEGRITY...)."""


def split_tpm2b(data: bytes, offset: int = 0) -> tuple[bytes, int]:
    (size,) = struct.unpack_from(">H", data, offset)
    end = offset + 2 + size
    if end > len(data):
        raise ImportRefused("TPM2B runs past its buffer")
    return data[offset + 2 : end], end


def reference_import(spec, ek_private, ek_public: TpmPublic, sealed: SealedSecret) -> bytes:
    """The sealed data (the AES key) as the EK's TPM would release it, or ImportRefused."""
    size = ek_public.name_hash.digest_size
    hash_name = ek_public.name_hash.name
    public_area, _ = split_tpm2b(sealed.object_public)
    name = struct.pack(">H", Alg.SHA256) + hashlib.sha256(public_area).digest()
    secret, _ = split_tpm2b(sealed.encrypted_seed)
    if isinstance(ek_private, rsa.RSAPrivateKey):
        try:
            seed = ek_private.decrypt(
                secret,
                padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), b"DUPLICATE\x00"),
            )
        except ValueError as error:
            raise ImportRefused("OAEP") from error
    else:
        x, end = split_tpm2b(secret)
        y, _ = split_tpm2b(secret, end)
        try:
            ephemeral = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), ek_private.curve
            ).public_key()
        except ValueError as error:  # the TPM answers TPM_RC_ECC_POINT
            raise ImportRefused("ephemeral point") from error
        z = ek_private.exchange(ec.ECDH(), ephemeral)
        ek_x = ek_private.public_key().public_numbers().x.to_bytes(32, "big")
        seed = spec.kdfe(Alg.SHA256, z, b"DUPLICATE", x, ek_x, size * 8)

    private, _ = split_tpm2b(sealed.duplicate)
    outer_hmac, offset = split_tpm2b(private)
    dup_sensitive = private[offset:]
    hmac_key = spec.kdfa(Alg.SHA256, seed, b"INTEGRITY", b"", b"", size * 8)
    expected = hmac.new(hmac_key, dup_sensitive + name, hash_name).digest()
    if not hmac.compare_digest(expected, outer_hmac):
        raise ImportRefused("outer HMAC")
    key_bits = ek_public.parameters.symmetric.key_bits
    sym_key = spec.kdfa(Alg.SHA256, seed, b"STORAGE", name, b"", key_bits)
    decryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).decryptor()
    plain = decryptor.update(dup_sensitive) + decryptor.finalize()
    sensitive, end = split_tpm2b(plain)
    assert end == len(plain)
    (sensitive_type,) = struct.unpack_from(">H", sensitive)
    assert sensitive_type == Alg.KEYEDHASH
    auth_value, offset = split_tpm2b(sensitive, 2)
    seed_value, offset = split_tpm2b(sensitive, offset)
    data, offset = split_tpm2b(sensitive, offset)
    assert offset == len(sensitive)
    assert auth_value == b""
    # TPM2_Load: a keyed-hash object's unique is H(seedValue || data)
    assert sealed.public.unique == hashlib.sha256(seed_value + data).digest()
    return data


@pytest.fixture(params=["rsa", "ecc"])
def ek(request, ek_templates, rsa_ek_key, ecc_ek_key):
    """(EK private key, EK TPMT_PUBLIC from the TCG default template)."""
    if request.param == "rsa":
        return rsa_ek_key, ek_templates.rsa.with_public_key(rsa_ek_key.public_key())
    return ecc_ek_key, ek_templates.ecc.with_public_key(ecc_ek_key.public_key())


@pytest.fixture(scope="module")
def sealed_rsa(ek_templates, rsa_ek_key, pcr_values) -> SealedSecret:
    ek = ek_templates.rsa.with_public_key(rsa_ek_key.public_key())
    return seal_secret(ek, b"database password", SELECTION, pcr_values, authorizer_name=NAME)


@pytest.fixture(scope="module")
def sealed_ecc(ek_templates, ecc_ek_key, pcr_values) -> SealedSecret:
    ek = ek_templates.ecc.with_public_key(ecc_ek_key.public_key())
    return seal_secret(
        ek,
        bytes(range(256)) * 3,
        PcrSelection.parse("sha1:0+sha256:7"),
        pcr_values,
        authorizer_name=NAME,
    )


# -- the blob opens exactly as the specification says -------------------------------------


@pytest.mark.parametrize("size", [1, 127, 128, 129, 4096, MAX_PAYLOAD_BYTES])
def test_reference_import_recovers_the_payload(spec, ek, pcr_values, size):
    private, public = ek
    payload = random.Random(size).randbytes(size)
    sealed = seal_secret(public, payload, SELECTION, pcr_values, authorizer_name=NAME)
    key = reference_import(spec, private, public, sealed)
    assert len(key) == 32
    assert open_payload(sealed, key) == payload


def test_sealed_object_is_importable_and_unseal_only(ek, pcr_values):
    _, public = ek
    sealed = seal_secret(public, b"x", SELECTION, pcr_values, authorizer_name=NAME)
    obj = sealed.public
    assert obj.type == Alg.KEYEDHASH and obj.name_alg == Alg.SHA256
    for attribute in (ObjectAttributes.ADMIN_WITH_POLICY, ObjectAttributes.NO_DA):
        assert obj.has(attribute)
    for attribute in (
        ObjectAttributes.USER_WITH_AUTH,  # the empty authValue must not unseal it
        ObjectAttributes.FIXED_TPM,  # TPM2_Import refuses fixedTPM / fixedParent
        ObjectAttributes.FIXED_PARENT,
        ObjectAttributes.SIGN_ENCRYPT,
        ObjectAttributes.DECRYPT,
        ObjectAttributes.RESTRICTED,
    ):
        assert not obj.has(attribute)
    assert obj.auth_policy == unseal_policy(SELECTION, pcr_values, NAME)
    assert sealed.selection == SELECTION
    assert sealed.policy_ref == UNSEAL_POLICY_REF
    # outer HMAC of the EK's nameAlg (SHA-256), then the 74-byte encrypted TPM2B_SENSITIVE
    assert struct.unpack_from(">HH", sealed.duplicate) == (2 + 32 + 74, 32)
    assert len(sealed.encrypted_seed) == 2 + (256 if public.type == Alg.RSA else 4 + 64)
    assert len(sealed.ciphertext) == 12 + 1 + 16


def test_every_seal_is_fresh(ek, pcr_values):
    _, public = ek
    first = seal_secret(public, b"same", SELECTION, pcr_values, authorizer_name=NAME)
    second = seal_secret(public, b"same", SELECTION, pcr_values, authorizer_name=NAME)
    assert first.encrypted_seed != second.encrypted_seed
    assert first.duplicate != second.duplicate
    assert first.object_public != second.object_public  # fresh seedValue in unique
    assert first.ciphertext[:12] != second.ciphertext[:12]


def test_another_ek_cannot_import(spec, ek, ek_templates, pcr_values):
    """The attack: a node that is not the sealed-to TPM tries to import the blob."""
    private, public = ek
    other_private = (
        rsa.generate_private_key(65537, 2048)
        if isinstance(private, rsa.RSAPrivateKey)
        else ec.generate_private_key(ec.SECP256R1())
    )
    template = ek_templates.rsa if public.type == Alg.RSA else ek_templates.ecc
    other_public = template.with_public_key(other_private.public_key())
    sealed = seal_secret(public, b"for one TPM only", SELECTION, pcr_values, authorizer_name=NAME)
    with pytest.raises(ImportRefused):
        reference_import(spec, other_private, other_public, sealed)


def test_the_policy_names_the_authorizing_channel_key(ek, pcr_values):
    """Sealed to another node's channel key, the same secret has another authPolicy; the
    authorizer is neither in the clear in the blob nor needed to parse it."""
    _, public = ek
    mine = seal_secret(public, b"x", SELECTION, pcr_values, authorizer_name=NAME)
    theirs = seal_secret(public, b"x", SELECTION, pcr_values, authorizer_name=OTHER_NAME)
    assert mine.public.auth_policy == unseal_policy(SELECTION, pcr_values, NAME)
    assert theirs.public.auth_policy == unseal_policy(SELECTION, pcr_values, OTHER_NAME)
    assert mine.public.auth_policy != theirs.public.auth_policy
    assert NAME not in mine.marshal()


@pytest.mark.parametrize(
    "name", [b"", NAME[:-1], bytes.fromhex("40000001"), bytes.fromhex("0099") + bytes(32)]
)
def test_the_authorizer_must_be_a_key_name(ek, pcr_values, name):
    _, public = ek
    with pytest.raises(SealingError, match="unseal policy"):
        seal_secret(public, b"x", SELECTION, pcr_values, authorizer_name=name)


@pytest.mark.parametrize("weaker", ["no-pcrs", "no-channel-key"])
def test_a_swapped_policy_breaks_the_outer_hmac(spec, ek, pcr_values, weaker):
    """The attack: rewrite authPolicy to one the attacker satisfies: no PCRs, or (a second
    user of the node's TPM) PCRs but no PolicySigned by the channel key."""
    private, public = ek
    sealed = seal_secret(public, b"secret", SELECTION, pcr_values, authorizer_name=NAME)
    policy = (
        policy_command_code(TPM_CC_UNSEAL, bytes(32))
        if weaker == "no-pcrs"
        else policy_command_code(TPM_CC_UNSEAL, policy_pcr(SELECTION, pcr_values))
    )
    forged = replace(
        sealed, object_public=replace(sealed.public, auth_policy=policy).marshal_tpm2b()
    )
    with pytest.raises(ImportRefused, match="outer HMAC"):
        reference_import(spec, private, public, forged)


@pytest.mark.parametrize("field", ["duplicate", "encrypted_seed", "object_public"])
def test_flipped_blob_bytes_never_import(spec, ek, pcr_values, field):
    private, public = ek
    sealed = seal_secret(public, b"secret", SELECTION, pcr_values, authorizer_name=NAME)
    original = getattr(sealed, field)
    for position in range(2, len(original)):
        flipped = bytearray(original)
        flipped[position] ^= 0x01
        try:
            tampered = replace(sealed, **{field: bytes(flipped)})
            reference_import(spec, private, public, tampered)
        except (SealingError, ImportRefused):
            continue
        raise AssertionError(f"{field} byte {position} flipped was imported")


# -- the payload envelope ------------------------------------------------------------------


def test_open_payload_rejects_a_wrong_key(sealed_rsa):
    with pytest.raises(SealingError, match="does not decrypt"):
        open_payload(sealed_rsa, bytes(32))
    with pytest.raises(SealingError, match="32 bytes"):
        open_payload(sealed_rsa, bytes(16))


def test_every_ciphertext_bit_flip_is_rejected(spec, rsa_ek_key, ek_templates, pcr_values):
    public = ek_templates.rsa.with_public_key(rsa_ek_key.public_key())
    sealed = seal_secret(public, b"sixteen byte pay", SELECTION, pcr_values, authorizer_name=NAME)
    key = reference_import(spec, rsa_ek_key, public, sealed)
    for position in range(len(sealed.ciphertext)):
        for bit in (0, 7):
            flipped = bytearray(sealed.ciphertext)
            flipped[position] ^= 1 << bit
            with pytest.raises(SealingError):
                open_payload(replace(sealed, ciphertext=bytes(flipped)), key)


def test_ciphertext_is_bound_to_its_sealed_object(spec, rsa_ek_key, ek_templates, pcr_values):
    """The attack: graft a ciphertext onto another sealed object under the same key; the
    AES-GCM associated data (the object's Name) no longer matches."""
    public = ek_templates.rsa.with_public_key(rsa_ek_key.public_key())
    sealed = seal_secret(public, b"payload", SELECTION, pcr_values, authorizer_name=NAME)
    key = reference_import(spec, rsa_ek_key, public, sealed)
    renamed = replace(sealed.public, auth_policy=hashlib.sha256(b"other").digest())
    grafted = replace(sealed, object_public=renamed.marshal_tpm2b())
    with pytest.raises(SealingError, match="does not decrypt"):
        open_payload(grafted, key)


# -- what seal_secret refuses ---------------------------------------------------------------


@pytest.mark.parametrize("size", [0, MAX_PAYLOAD_BYTES + 1])
def test_payload_size_limits(ek, pcr_values, size):
    _, public = ek
    with pytest.raises(SealingError, match=r"1\.\.65536 bytes"):
        seal_secret(public, bytes(size), SELECTION, pcr_values, authorizer_name=NAME)


def test_payload_must_be_bytes(ek, pcr_values):
    _, public = ek
    with pytest.raises(SealingError):
        seal_secret(public, "text", SELECTION, pcr_values, authorizer_name=NAME)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "selection",
    [
        PcrSelection(()),
        PcrSelection((BankSelection(Alg.SHA256, ()),)),
        PcrSelection((BankSelection(Alg.SHA256, (0,), 4),)),
        PcrSelection((BankSelection(Alg.SHA256, (7, 0)),)),
        PcrSelection((BankSelection(Alg.SHA256, (0,)), BankSelection(Alg.SHA256, (1,)))),
        PcrSelection((BankSelection(Alg.SM3_256, (0,)),)),
    ],
    ids=["empty", "empty-bank", "4-byte-map", "unsorted", "bank-twice", "sm3"],
)
def test_non_canonical_selections_are_refused(ek, pcr_values, selection):
    _, public = ek
    with pytest.raises(SealingError):
        seal_secret(public, b"x", selection, pcr_values, authorizer_name=NAME)


def test_missing_pcr_values_are_refused(ek):
    _, public = ek
    with pytest.raises(SealingError, match="sha256:12"):
        seal_secret(
            public,
            b"x",
            SELECTION,
            PcrValues({Alg.SHA256: {i: bytes(32) for i in range(8)}}),
            authorizer_name=NAME,
        )


def test_the_ek_must_be_a_storage_key(ek, pcr_values):
    _, public = ek
    not_restricted = replace(public, attributes=public.attributes & ~ObjectAttributes.RESTRICTED)
    with pytest.raises(SealingError, match="restricted decryption"):
        seal_secret(not_restricted, b"x", SELECTION, pcr_values, authorizer_name=NAME)
    no_aes = replace(public, parameters=replace(public.parameters, symmetric=SymmetricDefinition()))
    with pytest.raises(SealingError, match="AES-CFB"):
        seal_secret(no_aes, b"x", SELECTION, pcr_values, authorizer_name=NAME)


def test_a_keyed_hash_ek_is_refused(pcr_values, sealed_rsa):
    with pytest.raises(SealingError):
        seal_secret(sealed_rsa.public, b"x", SELECTION, pcr_values, authorizer_name=NAME)


# -- binary and JSON forms -----------------------------------------------------------------


def test_binary_round_trip(sealed_rsa, sealed_ecc):
    for sealed in (sealed_rsa, sealed_ecc):
        data = sealed.marshal()
        assert data.startswith(b"STKSEAL\x02")
        assert SealedSecret.unmarshal(data) == sealed
        assert SealedSecret.unmarshal(data).marshal() == data


def test_json_round_trip(sealed_rsa, sealed_ecc):
    assert sealed_rsa.to_json()["selection"] == "sha256:0,1,2,3,7,12"
    assert sealed_ecc.to_json()["selection"] == "sha1:0+sha256:7"
    for sealed in (sealed_rsa, sealed_ecc):
        document = sealed.to_json()
        assert set(document) == {
            "object_public",
            "duplicate",
            "encrypted_seed",
            "selection",
            "policy_ref",
            "ciphertext",
        }
        assert base64.b64decode(document["duplicate"]) == sealed.duplicate
        assert base64.b64decode(document["policy_ref"]) == b"stockade-unseal"
        assert SealedSecret.from_json(document) == sealed


@pytest.mark.parametrize(
    "change",
    [
        {"duplicate": None},
        {"extra": "x"},
        {"duplicate": 5},
        {"duplicate": "not base64!"},
        {"duplicate": "AAAA\n"},
        {"duplicate": "é"},
        {"selection": "sha256:"},
        {"selection": "sha256:24"},
        {"selection": "md5:0"},
        {"ciphertext": ""},
        {"object_public": base64.b64encode(b"\x00\x00").decode()},
        {"policy_ref": ""},
        {"policy_ref": base64.b64encode(b"stockade-unseal-other").decode()},
        {"policy_ref": 5},
    ],
)
def test_malformed_json_is_a_sealing_error(sealed_rsa, change):
    document: dict[str, object] = dict(sealed_rsa.to_json())
    for key, value in change.items():
        if value is None:
            del document[key]
        else:
            document[key] = value
    with pytest.raises(SealingError):
        SealedSecret.from_json(document)


def unbound_v1(sealed: SealedSecret) -> bytes:
    """The binary form of a secret sealed before channel-key binding (version 1: no
    policyRef field; its object's policy was PolicyPCR + PolicyCommandCode only)."""
    return (
        b"STKSEAL\x01"
        + sealed.object_public
        + sealed.duplicate
        + sealed.encrypted_seed
        + tpm2b(sealed.selection.marshal())
        + struct.pack(">I", len(sealed.ciphertext))
        + sealed.ciphertext
    )


def test_secrets_sealed_before_channel_binding_are_refused_cleanly(sealed_rsa):
    """An old blob (binary version 1) or an old answer (JSON without policy_ref) is a typed
    SealingError that says to fetch it again, never a crash or a silent attempt."""
    with pytest.raises(SealingError, match=r"version 1.*channel-key.*again"):
        SealedSecret.unmarshal(unbound_v1(sealed_rsa))
    old_json = {k: v for k, v in sealed_rsa.to_json().items() if k != "policy_ref"}
    with pytest.raises(SealingError, match=r"without policy_ref.*again"):
        SealedSecret.from_json(old_json)


def test_the_policy_ref_is_fixed(sealed_rsa):
    """The node signs unseal authorizations for "stockade-unseal" only: a blob asking it to
    sign for another policyRef is refused before the TPM is touched."""
    for other in (b"", b"stockade-unseal\x00", b"login"):
        with pytest.raises(SealingError, match="policyRef"):
            replace(sealed_rsa, policy_ref=other)
    data = sealed_rsa.marshal()
    ref_field = tpm2b(UNSEAL_POLICY_REF)
    assert data.count(ref_field) == 1
    with pytest.raises(SealingError, match="policyRef"):
        SealedSecret.unmarshal(data.replace(ref_field, tpm2b(b"stockade-unsea1")))


def test_json_that_is_not_an_object_is_a_sealing_error():
    with pytest.raises(SealingError):
        SealedSecret.from_json(["object_public"])  # type: ignore[arg-type]


def test_sealed_object_attributes_are_checked(sealed_rsa):
    """An object_public that would unseal with the empty password is not a sealed secret."""
    weak = replace(
        sealed_rsa.public, attributes=sealed_rsa.public.attributes | ObjectAttributes.USER_WITH_AUTH
    )
    with pytest.raises(SealingError, match="attributes"):
        replace(sealed_rsa, object_public=weak.marshal_tpm2b())


def test_construction_checks_every_field(sealed_rsa):
    bad = {
        "object_public": [b"", sealed_rsa.object_public + b"\x00"],
        "duplicate": [b"\x00\x00", sealed_rsa.duplicate[:-1], sealed_rsa.duplicate + b"\x00"],
        "encrypted_seed": [b"\x00\x00", b"\x00\x05abc"],
        "ciphertext": [bytes(28), bytes(12 + 16 + MAX_PAYLOAD_BYTES + 1)],
    }
    for field, values in bad.items():
        for value in values:
            with pytest.raises(SealingError):
                replace(sealed_rsa, **{field: value})
    with pytest.raises(SealingError, match="must be bytes"):
        replace(sealed_rsa, duplicate=bytearray(sealed_rsa.duplicate))


def test_header_errors(sealed_rsa):
    data = sealed_rsa.marshal()
    with pytest.raises(SealingError, match="magic"):
        SealedSecret.unmarshal(b"STKSEAM" + data[7:])
    with pytest.raises(SealingError, match="version 3"):
        SealedSecret.unmarshal(data[:7] + b"\x03" + data[8:])
    with pytest.raises(SealingError, match="trailing"):
        SealedSecret.unmarshal(data + b"\x00")
    with pytest.raises(SealingError, match="too large"):
        SealedSecret.unmarshal(data[: -len(sealed_rsa.ciphertext) - 4] + b"\xff\xff\xff\xff")


def only_typed_errors(data: bytes) -> None:
    try:
        sealed = SealedSecret.unmarshal(data)
    except EvidenceError:
        return
    assert sealed.marshal() == data


def test_every_truncation_and_bit_flip_is_a_typed_error(sealed_rsa, sealed_ecc):
    for sealed in (sealed_rsa, sealed_ecc):
        data = sealed.marshal()
        for length in range(len(data)):
            with pytest.raises(SealingError):
                SealedSecret.unmarshal(data[:length])
        for position in range(len(data)):
            for bit in range(8):
                flipped = bytearray(data)
                flipped[position] ^= 1 << bit
                only_typed_errors(bytes(flipped))


@st.composite
def mutated(draw, seeds):
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        operation = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if operation == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set" and data:
            data[position] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]))
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif operation == "delete" and data:
            del data[position : position + draw(st.integers(1, 4))]
        elif operation == "truncate":
            del data[position:]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_hypothesis_mutations_are_typed_errors(sealed_rsa, sealed_ecc, data):
    only_typed_errors(data.draw(mutated([sealed_rsa.marshal(), sealed_ecc.marshal()])))


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=600))
def test_arbitrary_bytes_after_the_header_are_typed_errors(body):
    only_typed_errors(b"STKSEAL\x02" + body)
    only_typed_errors(b"STKSEAL\x01" + body)
    only_typed_errors(body)


# -- the fuzz target -----------------------------------------------------------------------


def test_fuzz_target_accepts_real_blobs_and_their_mutations(sealed_rsa, sealed_ecc):
    spec_ = importlib.util.spec_from_file_location("fuzz_sealed_secret", FUZZ_TARGET)
    assert spec_ is not None and spec_.loader is not None
    target = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(target)
    rng = random.Random("fuzz_sealed_secret")
    for seed in (sealed_rsa.marshal(), sealed_ecc.marshal()):
        target.test_one_input(seed)
        for length in range(0, len(seed), 7):
            target.test_one_input(seed[:length])
        for _ in range(300):
            mutated_ = bytearray(seed)
            mutated_[rng.randrange(len(mutated_))] ^= 1 << rng.randrange(8)
            target.test_one_input(bytes(mutated_))
    for _ in range(500):
        target.test_one_input(b"STKSEAL\x02" + rng.randbytes(rng.randrange(200)))
