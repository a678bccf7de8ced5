"""Org keys and the Secure Boot signing certificate."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stockade.release.errors import KeyExists, KeyFileError
from stockade.release.keys import (
    KeyType,
    generate_key_set,
    keyid,
    load_signing_key,
    load_verifying_key,
    private_pem,
    public_pem,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_generate_writes_four_files_with_private_keys_0600(tmp_path, key_type):
    generated = generate_key_set(tmp_path / "keys", key_type, "Acme", NOW)
    paths = generated.paths
    assert [path.name for path in paths.all()] == [
        "org.key", "org.pub", "secureboot.key", "secureboot.crt",
    ]  # fmt: skip
    assert stat.S_IMODE(paths.org_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.secure_boot_key.stat().st_mode) == 0o600
    signing = load_signing_key(paths.org_key.read_bytes())
    verifying = load_verifying_key(paths.org_pub.read_bytes())
    expected = (
        ed25519.Ed25519PrivateKey if key_type is KeyType.ED25519 else ec.EllipticCurvePrivateKey
    )
    assert isinstance(signing, expected)
    assert public_pem(signing.public_key()) == public_pem(verifying)
    assert paths.org_key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert generated.org_keyid == keyid(verifying)


def test_secure_boot_certificate_is_a_self_signed_rsa2048_code_signing_cert(tmp_path):
    generated = generate_key_set(tmp_path, KeyType.ECDSA_P256, "Acme Corp", NOW)
    certificate = x509.load_pem_x509_certificate(generated.paths.secure_boot_cert.read_bytes())
    public = certificate.public_key()
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == 2048
    common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == "Acme Corp Secure Boot Signing"
    assert certificate.issuer == certificate.subject
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CODE_SIGNING]
    assert certificate.not_valid_before_utc == NOW
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert 3652 <= lifetime.days <= 3653
    public.verify(
        certificate.signature,
        certificate.tbs_certificate_bytes,
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    key = load_pem_rsa(generated.paths.secure_boot_key.read_bytes())
    assert key.public_key().public_numbers() == public.public_numbers()


def load_pem_rsa(pem: bytes) -> rsa.RSAPrivateKey:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key = load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def test_existing_keys_are_never_overwritten(tmp_path):
    first = generate_key_set(tmp_path, KeyType.ED25519, "Acme", NOW)
    before = first.paths.org_key.read_bytes()
    with pytest.raises(KeyExists) as refused:
        generate_key_set(tmp_path, KeyType.ED25519, "Acme", NOW)
    assert refused.value.exit_code == 2
    assert first.paths.org_key.read_bytes() == before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "secureboot.crt").write_text("keep me")
    with pytest.raises(KeyExists, match=r"secureboot\.crt"):
        generate_key_set(tmp_path / "other", KeyType.ED25519, "Acme", NOW)
    assert not (tmp_path / "other" / "org.key").exists()


@pytest.mark.tools
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_keyid_is_sha256_of_the_der_spki_as_openssl_computes_it(tmp_path):
    generated = generate_key_set(tmp_path, KeyType.ECDSA_P256, "Acme", NOW)
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-in", str(generated.paths.org_pub), "-outform", "DER"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    assert generated.org_keyid == hashlib.sha256(der).hexdigest()


@pytest.mark.parametrize(
    ("make_key", "message"),
    [
        (lambda: ec.generate_private_key(ec.SECP384R1()), "secp384r1"),
        (lambda: rsa.generate_private_key(public_exponent=65537, key_size=1024), "RSA"),
    ],
)
def test_other_key_types_are_refused(make_key, message):
    key = make_key()
    with pytest.raises(KeyFileError, match=message):
        load_signing_key(private_pem(key))
    with pytest.raises(KeyFileError, match=message):
        load_verifying_key(public_pem(key.public_key()))


@pytest.mark.parametrize("content", [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAA\n"])
def test_unreadable_key_files_are_typed_errors(content):
    with pytest.raises(KeyFileError):
        load_signing_key(content)
    with pytest.raises(KeyFileError):
        load_verifying_key(content)
