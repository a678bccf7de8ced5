"""Software TPM2_MakeCredential: credential protection (TPM 2.0 Part 1, 24 "Credential
Protection", with secret sharing from Part 1 Annex B (RSA) and C (ECC)).

The verifier seals a secret to (EK, AK name). Only the TPM that holds that EK
private key can recover it with TPM2_ActivateCredential, and only for an object
whose Name is exactly the AK name, so recovering the secret proves that the
AK is resident in the same TPM as the EK.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hmac
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from stockade.evidence.algorithms import Alg, HashAlgorithm, curve, curve_size
from stockade.evidence.errors import CredentialError, EvidenceError
from stockade.evidence.kdf import kdfa, kdfe
from stockade.evidence.marshal import Reader, Writer, tpm2b
from stockade.evidence.public import EccParameters, EccPoint, RsaParameters, TpmPublic

AES_KEY_BITS = (128, 192, 256)
IDENTITY = b"IDENTITY"
STORAGE = b"STORAGE"
INTEGRITY = b"INTEGRITY"


@dataclass(frozen=True)
class CredentialBlob:
    """TPM2_MakeCredential's outputs, in wire form.

    ``credential_blob`` is the body of a TPM2B_ID_OBJECT (integrityHMAC then
    encIdentity); ``encrypted_secret`` the body of a TPM2B_ENCRYPTED_SECRET.
    """

    credential_blob: bytes
    encrypted_secret: bytes


def symmetric_key_bits(ek: TpmPublic) -> int:
    """The AES key size of a storage parent's (the EK's) symmetric protection."""
    if not isinstance(ek.parameters, RsaParameters | EccParameters):
        raise CredentialError("ek", "the EK must be an RSA or ECC key")
    symmetric = ek.parameters.symmetric
    if symmetric.algorithm != Alg.AES or symmetric.mode != Alg.CFB:
        raise CredentialError(
            "ek", "the EK must be a storage key with AES-CFB symmetric protection"
        )
    if symmetric.key_bits not in AES_KEY_BITS:
        raise CredentialError("ek", f"AES key size {symmetric.key_bits} is not 128, 192 or 256")
    return symmetric.key_bits


def encrypt_seed(ek: TpmPublic, name_hash: HashAlgorithm, label: bytes) -> tuple[bytes, bytes]:
    """A fresh seed and its TPM2B_ENCRYPTED_SECRET body for ``ek``: RSA-OAEP with the label
    and its NUL (Part 1, Annex B.10.3) or ECDH + KDFe (Annex C.6.4). ``label`` is IDENTITY
    for credentials, DUPLICATE for import blobs."""
    key = ek.public_key()
    if isinstance(ek.parameters, RsaParameters) and isinstance(key, rsa.RSAPublicKey):
        seed = os.urandom(name_hash.digest_size)
        oaep = padding.OAEP(
            mgf=padding.MGF1(name_hash.new()), algorithm=name_hash.new(), label=label + b"\x00"
        )
        return seed, key.encrypt(seed, oaep)
    if isinstance(ek.parameters, EccParameters) and isinstance(key, ec.EllipticCurvePublicKey):
        curve_id = ek.parameters.curve_id
        size = curve_size(curve_id)
        ephemeral = ec.generate_private_key(curve(curve_id))
        shared_x = ephemeral.exchange(ec.ECDH(), key)
        numbers = ephemeral.public_key().public_numbers()
        point = EccPoint(numbers.x.to_bytes(size, "big"), numbers.y.to_bytes(size, "big"))
        ek_x = key.public_numbers().x.to_bytes(size, "big")
        seed = kdfe(name_hash, shared_x, label, point.x, ek_x, name_hash.digest_size * 8)
        return seed, point.marshal()
    raise CredentialError("ek", "the EK must be an RSA or ECC key")


def outer_wrap(
    name_hash: HashAlgorithm, seed: bytes, key_bits: int, name: bytes, plaintext: bytes
) -> bytes:
    """Part 1, 24.4-24.5 (and 23.3.2 for duplication): AES-CFB (zero IV) of TPM2B(plaintext)
    under KDFa(seed, "STORAGE", name), preceded by TPM2B(HMAC(KDFa(seed, "INTEGRITY"),
    encrypted || name))."""
    symmetric_key = kdfa(name_hash, seed, STORAGE, name, b"", key_bits)
    encryptor = Cipher(algorithms.AES(symmetric_key), CFB(bytes(16))).encryptor()
    encrypted = encryptor.update(tpm2b(plaintext)) + encryptor.finalize()
    hmac_key = kdfa(name_hash, seed, INTEGRITY, b"", b"", name_hash.digest_size * 8)
    outer = hmac.HMAC(hmac_key, name_hash.new())
    outer.update(encrypted + name)
    return tpm2b(outer.finalize()) + encrypted


def make_credential(ek: TpmPublic, object_name: bytes, secret: bytes) -> CredentialBlob:
    """Protect ``secret`` (at most one digest long) for ``object_name`` under ``ek``."""
    name_hash = ek.name_hash
    if not 0 < len(secret) <= name_hash.digest_size:
        raise CredentialError(
            "secret", f"must be 1..{name_hash.digest_size} bytes, got {len(secret)}"
        )
    key_bits = symmetric_key_bits(ek)
    seed, encrypted_secret = encrypt_seed(ek, name_hash, IDENTITY)
    return CredentialBlob(
        outer_wrap(name_hash, seed, key_bits, object_name, secret), encrypted_secret
    )


def marshal_credential_file(blob: CredentialBlob) -> bytes:
    """The file ``tpm2_makecredential -o`` writes and ``tpm2_activatecredential -i`` reads:
    magic 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
    """
    return (
        Writer()
        .u32(TPM2_TOOLS_CREDENTIAL_MAGIC)
        .u32(1)
        .tpm2b(blob.credential_blob)
        .tpm2b(blob.encrypted_secret)
        .bytes()
    )


def unmarshal_credential_file(data: bytes) -> CredentialBlob:
    reader = Reader(data, "tpm2-tools credential file")
    if reader.u32("magic") != TPM2_TOOLS_CREDENTIAL_MAGIC:
        raise EvidenceError("not a tpm2-tools credential file (bad magic)")
    if reader.u32("version") != 1:
        raise EvidenceError("unsupported tpm2-tools credential file version")
    blob = CredentialBlob(reader.tpm2b("TPM2B_ID_OBJECT"), reader.tpm2b("TPM2B_ENCRYPTED_SECRET"))
    reader.expect_end()
    return blob


TPM2_TOOLS_CREDENTIAL_MAGIC = 0xBADCC0DE
