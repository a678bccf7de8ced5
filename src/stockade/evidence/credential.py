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


def _symmetric_key_bits(ek: TpmPublic) -> int:
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


def _seed_for_rsa(ek: TpmPublic, name_hash: HashAlgorithm) -> tuple[bytes, bytes]:
    key = ek.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise CredentialError("ek", "RSA EK template without an RSA key")
    seed = os.urandom(name_hash.digest_size)
    encrypted = key.encrypt(
        seed,
        padding.OAEP(
            mgf=padding.MGF1(name_hash.new()),
            algorithm=name_hash.new(),
            label=IDENTITY + b"\x00",
        ),
    )
    return seed, encrypted


def _seed_for_ecc(ek: TpmPublic, name_hash: HashAlgorithm, curve_id: int) -> tuple[bytes, bytes]:
    key = ek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise CredentialError("ek", "ECC EK template without an ECC key")
    size = curve_size(curve_id)
    ephemeral = ec.generate_private_key(curve(curve_id))
    shared_x = ephemeral.exchange(ec.ECDH(), key)
    numbers = ephemeral.public_key().public_numbers()
    ephemeral_point = EccPoint(numbers.x.to_bytes(size, "big"), numbers.y.to_bytes(size, "big"))
    ek_x = key.public_numbers().x.to_bytes(size, "big")
    seed = kdfe(name_hash, shared_x, IDENTITY, ephemeral_point.x, ek_x, name_hash.digest_size * 8)
    return seed, ephemeral_point.marshal()


def make_credential(ek: TpmPublic, object_name: bytes, secret: bytes) -> CredentialBlob:
    """Protect ``secret`` (at most one digest long) for ``object_name`` under ``ek``."""
    name_hash = ek.name_hash
    if not 0 < len(secret) <= name_hash.digest_size:
        raise CredentialError(
            "secret", f"must be 1..{name_hash.digest_size} bytes, got {len(secret)}"
        )
    key_bits = _symmetric_key_bits(ek)
    if isinstance(ek.parameters, RsaParameters):
        seed, encrypted_secret = _seed_for_rsa(ek, name_hash)
    elif isinstance(ek.parameters, EccParameters):
        seed, encrypted_secret = _seed_for_ecc(ek, name_hash, ek.parameters.curve_id)
    else:
        raise CredentialError("ek", "the EK must be an RSA or ECC key")

    symmetric_key = kdfa(name_hash, seed, STORAGE, object_name, b"", key_bits)
    encryptor = Cipher(algorithms.AES(symmetric_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(tpm2b(secret)) + encryptor.finalize()
    hmac_key = kdfa(name_hash, seed, INTEGRITY, b"", b"", name_hash.digest_size * 8)
    outer = hmac.HMAC(hmac_key, name_hash.new())
    outer.update(enc_identity + object_name)
    return CredentialBlob(tpm2b(outer.finalize()) + enc_identity, encrypted_secret)


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
