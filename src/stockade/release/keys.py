"""Organization keys: the org signing key (DSSE envelopes) and the Secure Boot signing
key with its self-signed certificate (the development firmware's db; ``sbsign``).

A key id is the lowercase hex SHA-256 of the public key's DER SubjectPublicKeyInfo.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stockade.certificates import key_usage
from stockade.release.errors import KeyExists, KeyFileError

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
VerifyingKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

SECURE_BOOT_VALIDITY = dt.timedelta(days=3653)  # ten years, leap days included
SECURE_BOOT_RSA_BITS = 2048


class KeyType(StrEnum):
    ECDSA_P256 = "ecdsa-p256"
    ED25519 = "ed25519"


@dataclass(frozen=True)
class KeySetPaths:
    """The four files ``stockade keys generate`` writes."""

    org_key: Path
    org_pub: Path
    secure_boot_key: Path
    secure_boot_cert: Path

    @classmethod
    def in_directory(cls, directory: Path) -> KeySetPaths:
        return cls(
            org_key=directory / "org.key",
            org_pub=directory / "org.pub",
            secure_boot_key=directory / "secureboot.key",
            secure_boot_cert=directory / "secureboot.crt",
        )

    def all(self) -> tuple[Path, ...]:
        return (self.org_key, self.org_pub, self.secure_boot_key, self.secure_boot_cert)


@dataclass(frozen=True)
class GeneratedKeys:
    paths: KeySetPaths
    key_type: KeyType
    org_keyid: str
    secure_boot_subject: str
    secure_boot_fingerprint: str
    """Lowercase hex SHA-256 of the certificate's DER (what an EFI_CERT_X509 db entry holds)."""
    secure_boot_not_after: dt.datetime

    def to_json(self) -> dict[str, object]:
        return {
            "key_type": self.key_type.value,
            "org_key": str(self.paths.org_key),
            "org_pub": str(self.paths.org_pub),
            "org_keyid": self.org_keyid,
            "secure_boot_key": str(self.paths.secure_boot_key),
            "secure_boot_cert": str(self.paths.secure_boot_cert),
            "secure_boot_subject": self.secure_boot_subject,
            "secure_boot_sha256": self.secure_boot_fingerprint,
            "secure_boot_not_after": self.secure_boot_not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


def keyid(public_key: VerifyingKey) -> str:
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def generate_signing_key(key_type: KeyType) -> SigningKey:
    if key_type is KeyType.ED25519:
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _accept(key: object, what: str) -> None:
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise KeyFileError(f"{what} is ECDSA on {key.curve.name}; only P-256 is accepted")
        return
    if not isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        raise KeyFileError(f"{what} is {type(key).__name__}; only ECDSA P-256 or Ed25519")


def load_signing_key(pem: bytes, what: str = "signing key") -> SigningKey:
    """A PKCS#8 (or traditional) PEM private key, unencrypted, ECDSA P-256 or Ed25519."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise KeyFileError(f"{what} is not an unencrypted PEM private key: {error}") from None
    _accept(key, what)
    assert isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey)
    return key


def load_verifying_key(pem: bytes, what: str = "public key") -> VerifyingKey:
    """A PEM SubjectPublicKeyInfo, ECDSA P-256 or Ed25519."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise KeyFileError(f"{what} is not a PEM public key: {error}") from None
    _accept(key, what)
    assert isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey)
    return key


def private_pem(key: SigningKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_pem(key: VerifyingKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def secure_boot_certificate(
    key: rsa.RSAPrivateKey, organization: str, now: dt.datetime
) -> x509.Certificate:
    """Self-signed code-signing certificate, CN "<organization> Secure Boot Signing",
    valid ten years from ``now``."""
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"{organization} Secure Boot Signing"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        ]
    )
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + SECURE_BOOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            key_usage(digital_signature=True),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _write_new(path: Path, content: bytes, mode: int) -> None:
    """Create ``path``; never replace an existing file (O_EXCL)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise KeyExists(f"'{path}' exists; refusing to overwrite a key") from None
    try:
        os.fchmod(fd, mode)
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_key_set(
    directory: Path, key_type: KeyType, organization: str, now: dt.datetime
) -> GeneratedKeys:
    """Write org.key (0600), org.pub, secureboot.key (0600) and secureboot.crt into
    ``directory``; ``KeyExists`` (exit 2) when any of them is already there."""
    paths = KeySetPaths.in_directory(directory)
    existing = [str(path) for path in paths.all() if path.exists()]
    if existing:
        raise KeyExists(f"refusing to overwrite existing keys: {', '.join(existing)}")
    org = generate_signing_key(key_type)
    boot = rsa.generate_private_key(public_exponent=65537, key_size=SECURE_BOOT_RSA_BITS)
    certificate = secure_boot_certificate(boot, organization, now)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_new(paths.org_key, private_pem(org), 0o600)
        _write_new(paths.org_pub, public_pem(org.public_key()), 0o644)
        _write_new(paths.secure_boot_key, private_pem(boot), 0o600)
        _write_new(
            paths.secure_boot_cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644
        )
    except OSError as error:
        raise KeyFileError(
            f"cannot write keys into '{directory}': {error.strerror or error}"
        ) from None
    subject = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return GeneratedKeys(
        paths=paths,
        key_type=key_type,
        org_keyid=keyid(org.public_key()),
        secure_boot_subject=str(subject),
        secure_boot_fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
        secure_boot_not_after=certificate.not_valid_after_utc,
    )
