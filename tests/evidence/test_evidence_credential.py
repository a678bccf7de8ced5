"""Software MakeCredential, checked by a software ActivateCredential written from the spec.

``spec.activate_credential`` (conftest.py) does what TPM2_ActivateCredential does: recover
the seed with the EK private key (RSA-OAEP with label "IDENTITY\\0", or ECDH + KDFe), check
the outer HMAC keyed by KDFa(seed, "INTEGRITY"), then decrypt with AES-CFB keyed by
KDFa(seed, "STORAGE", name) and unwrap the TPM2B.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace

import pytest
import vectors
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from stockade.evidence import (
    CredentialBlob,
    CredentialError,
    EvidenceError,
    MalformedStructure,
    TpmPublic,
    make_credential,
)
from stockade.evidence.algorithms import Alg
from stockade.evidence.credential import marshal_credential_file, unmarshal_credential_file
from stockade.evidence.public import SymmetricDefinition

AK_NAME = vectors.AK_NAME
OTHER_NAME = b"\x00\x0b" + hashlib.sha256(b"some other key").digest()


@pytest.fixture(params=["rsa", "ecc"])
def ek(request, ek_templates, rsa_ek_key, ecc_ek_key):
    """(EK private key, EK TPMT_PUBLIC from the TCG default template)."""
    if request.param == "rsa":
        return rsa_ek_key, ek_templates.rsa.with_public_key(rsa_ek_key.public_key())
    return ecc_ek_key, ek_templates.ecc.with_public_key(ecc_ek_key.public_key())


@pytest.mark.parametrize("secret", [b"\x01", b"sixteen byte key", bytes(range(32))])
def test_the_right_ek_and_name_recover_the_secret(spec, ek, secret):
    private, public = ek
    blob = make_credential(public, AK_NAME, secret)
    assert spec.activate_credential(private, public, AK_NAME, blob) == secret


def test_blob_layout(ek):
    _, public = ek
    blob = make_credential(public, AK_NAME, b"secret")
    (hmac_size,) = struct.unpack_from(">H", blob.credential_blob)
    assert hmac_size == 32  # SHA-256 nameAlg
    # encIdentity is the encrypted TPM2B: 2 + len(secret) bytes, CFB does not pad.
    assert len(blob.credential_blob) == 2 + 32 + 2 + len(b"secret")
    if public.type == Alg.RSA:
        assert len(blob.encrypted_secret) == 256
    else:
        # a TPMS_ECC_POINT on P-256: two 32-byte TPM2B coordinates
        assert len(blob.encrypted_secret) == 2 + 32 + 2 + 32
        assert blob.encrypted_secret[:2] == b"\x00\x20"
        assert blob.encrypted_secret[34:36] == b"\x00\x20"


def test_each_credential_uses_a_fresh_seed(spec, ek):
    private, public = ek
    first = make_credential(public, AK_NAME, b"same secret")
    second = make_credential(public, AK_NAME, b"same secret")
    assert first.encrypted_secret != second.encrypted_secret
    assert first.credential_blob != second.credential_blob
    assert spec.activate_credential(private, public, AK_NAME, first) == b"same secret"
    assert spec.activate_credential(private, public, AK_NAME, second) == b"same secret"


def test_a_different_object_name_fails_the_integrity_check(spec, ek):
    """The TPM refuses to release the secret to any object but the AK it was made for."""
    private, public = ek
    blob = make_credential(public, AK_NAME, b"secret")
    with pytest.raises(spec.IntegrityCheckFailed):
        spec.activate_credential(private, public, OTHER_NAME, blob)
    flipped = AK_NAME[:-1] + bytes([AK_NAME[-1] ^ 1])
    with pytest.raises(spec.IntegrityCheckFailed):
        spec.activate_credential(private, public, flipped, blob)


def test_a_different_ek_cannot_recover_the_secret(spec, ek):
    private, public = ek
    blob = make_credential(public, AK_NAME, b"secret")
    if isinstance(private, rsa.RSAPrivateKey):
        other = rsa.generate_private_key(65537, 2048)
        # RSA-OAEP decryption with the wrong key fails outright.
        with pytest.raises(ValueError, match="Decryption failed"):
            spec.activate_credential(other, public, AK_NAME, blob)
    else:
        other = ec.generate_private_key(ec.SECP256R1())
        # ECDH with the wrong key gives another seed: the HMAC does not match.
        with pytest.raises(spec.IntegrityCheckFailed):
            spec.activate_credential(other, public, AK_NAME, blob)


def test_tampered_blob_fails_the_integrity_check(spec, ek):
    private, public = ek
    blob = make_credential(public, AK_NAME, b"secret")
    body = bytearray(blob.credential_blob)
    body[-1] ^= 0x01  # a bit of encIdentity
    with pytest.raises(spec.IntegrityCheckFailed):
        spec.activate_credential(
            private, public, AK_NAME, replace(blob, credential_blob=bytes(body))
        )


def test_the_real_swtpm_ek_public_is_usable(ek_templates):
    """The EK exactly as the TPM reported it (TPM2B_PUBLIC from tpm2_createek)."""
    ek = TpmPublic.unmarshal_tpm2b(vectors.EK_PUB)
    blob = make_credential(ek, AK_NAME, b"x" * 32)
    assert len(blob.encrypted_secret) == 256
    assert len(blob.credential_blob) == 2 + 32 + 2 + 32


def test_aes_256_ek_uses_a_256_bit_key(spec, rsa_ek_key, ek_templates):
    template = replace(
        ek_templates.rsa,
        parameters=replace(
            ek_templates.rsa.parameters, symmetric=SymmetricDefinition(Alg.AES, 256, Alg.CFB)
        ),
    )
    public = template.with_public_key(rsa_ek_key.public_key())
    blob = make_credential(public, AK_NAME, b"secret")
    assert spec.activate_credential(rsa_ek_key, public, AK_NAME, blob) == b"secret"


@pytest.mark.parametrize("secret", [b"", bytes(33), bytes(64)])
def test_secret_of_the_wrong_size_is_refused(ek, secret):
    _, public = ek
    with pytest.raises(CredentialError) as caught:
        make_credential(public, AK_NAME, secret)
    assert caught.value.check == "secret"
    assert f"got {len(secret)}" in caught.value.detail


@pytest.mark.parametrize(
    "symmetric",
    [SymmetricDefinition(), SymmetricDefinition(Alg.AES, 128, Alg.CBC)],
    ids=["null", "aes-cbc"],
)
def test_ek_without_aes_cfb_protection_is_refused(ek, symmetric):
    _, public = ek
    bad = replace(public, parameters=replace(public.parameters, symmetric=symmetric))
    with pytest.raises(CredentialError) as caught:
        make_credential(bad, AK_NAME, b"secret")
    assert caught.value.check == "ek"


def test_ek_with_an_impossible_aes_key_size_is_a_credential_error(ek):
    _, public = ek
    bad = replace(
        public,
        parameters=replace(public.parameters, symmetric=SymmetricDefinition(Alg.AES, 100, Alg.CFB)),
    )
    with pytest.raises(CredentialError):
        make_credential(bad, AK_NAME, b"secret")


# -- the tpm2-tools credential file -----------------------------------------------------


def test_credential_file_layout_and_round_trip(ek):
    _, public = ek
    blob = make_credential(public, AK_NAME, b"secret")
    data = marshal_credential_file(blob)
    assert data[:8] == bytes.fromhex("badcc0de00000001")
    cb = len(blob.credential_blob)
    assert data[8:10] == struct.pack(">H", cb)
    assert data[10 : 10 + cb] == blob.credential_blob
    assert data[10 + cb : 12 + cb] == struct.pack(">H", len(blob.encrypted_secret))
    assert data[12 + cb :] == blob.encrypted_secret
    assert unmarshal_credential_file(data) == blob
    assert marshal_credential_file(unmarshal_credential_file(data)) == data


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (bytes.fromhex("badcc0df00000001") + bytes(4), EvidenceError, "bad magic"),
        (bytes.fromhex("badcc0de00000002") + bytes(4), EvidenceError, "version"),
        (bytes.fromhex("badcc0de00000001") + bytes(4) + b"\x00", MalformedStructure, "trailing"),
        (bytes.fromhex("badcc0de00000001") + b"\x00\x05abc", MalformedStructure, "needs 5"),
        (bytes.fromhex("badcc0"), MalformedStructure, "magic"),
    ],
)
def test_bad_credential_files_are_rejected(data, error, message):
    with pytest.raises(error, match=message):
        unmarshal_credential_file(data)


def test_empty_credential_file_body_round_trips():
    blob = CredentialBlob(b"", b"")
    assert marshal_credential_file(blob) == bytes.fromhex("badcc0de00000001") + bytes(4)
    assert unmarshal_credential_file(marshal_credential_file(blob)) == blob
