"""A two-level development CA on disk: the shape both of Stockade's stand-ins for a vendor
share, the EK CA that endorses software TPMs (``tpm/ekca.py``) and the cloud CA that
certifies their AKs as GCE does (``tpm/cloud_ca.py``).

Layout of its directory::

    root-cert.pem  root-key.pem         self-signed root, P-384 (key 0600)
    issuer-cert.pem  issuer-key.pem     issuing CA signed by the root (key 0600)

The issuer key is written last: its presence marks a complete CA, created once under a lock.
Keys are SEC1 PEM ("EC PRIVATE KEY"), the form swtpm_localca (GnuTLS) reads.
"""

from __future__ import annotations

import datetime
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stockade.certificates import key_usage
from stockade.errors import InputError
from stockade.home import locked, write_atomic

ROOT_VALIDITY = datetime.timedelta(days=20 * 365)
ISSUER_VALIDITY = datetime.timedelta(days=10 * 365)


@dataclass(frozen=True)
class DevelopmentCa:
    """A root and an issuing CA in ``directory``; :meth:`load_or_create` makes or loads it.
    Subclasses name themselves (``LABEL``) and add what they issue."""

    directory: Path
    LABEL: ClassVar[str] = "development"

    @property
    def root_cert_path(self) -> Path:
        return self.directory / "root-cert.pem"

    @property
    def root_key_path(self) -> Path:
        return self.directory / "root-key.pem"

    @property
    def issuer_cert_path(self) -> Path:
        return self.directory / "issuer-cert.pem"

    @property
    def issuer_key_path(self) -> Path:
        return self.directory / "issuer-key.pem"

    @classmethod
    def open(cls, directory: Path) -> Self:
        """Load the CA in ``directory``, creating it (once, under a lock) if missing."""
        directory = directory.expanduser().absolute()
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(
                f"cannot create {cls.LABEL} CA directory {directory}: {error}"
            ) from None
        ca = cls(directory)
        with locked(directory / ".lock"):
            if not ca.issuer_key_path.exists():
                ca._create()
            ca._loaded()
        ca.issuer_certificate()  # fail early on a damaged directory
        return ca

    def _loaded(self) -> None:
        """Called under the lock on every load (a subclass writes its configuration)."""

    def _created(self) -> None:
        """Called once, before the issuer key marks the CA complete."""

    def root_certificate(self) -> x509.Certificate:
        return self._load_cert(self.root_cert_path)

    def issuer_certificate(self) -> x509.Certificate:
        return self._load_cert(self.issuer_cert_path)

    def issuer_key(self) -> ec.EllipticCurvePrivateKey:
        try:
            key = serialization.load_pem_private_key(self.issuer_key_path.read_bytes(), None)
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read {self.issuer_key_path}: {error}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InputError(f"{self.issuer_key_path} is not an EC private key")
        return key

    def trusted_roots(self) -> list[x509.Certificate]:
        """Trust anchors for the certificates this CA issues."""
        return [self.root_certificate()]

    def intermediates(self) -> list[x509.Certificate]:
        """Untrusted intermediates a validator needs to build a path to the root."""
        return [self.issuer_certificate()]

    def _load_cert(self, path: Path) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read {self.LABEL} CA certificate {path}: {error}") from None

    def _create(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        tag = secrets.token_hex(4)
        root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = ca_name(f"Stockade {self.LABEL} Root CA {tag}")
        root = ca_certificate(root_name, root_key.public_key(), root_name, root_key,
                              now, now + ROOT_VALIDITY, path_length=1)  # fmt: skip
        issuer_key = ec.generate_private_key(ec.SECP384R1())
        issuer = ca_certificate(ca_name(f"Stockade {self.LABEL} Issuing CA {tag}"),
                                issuer_key.public_key(), root_name, root_key,
                                now, now + ISSUER_VALIDITY, path_length=0)  # fmt: skip
        write_atomic(self.root_key_path, _private_pem(root_key), mode=0o600)
        write_atomic(self.root_cert_path, root.public_bytes(serialization.Encoding.PEM))
        write_atomic(self.issuer_cert_path, issuer.public_bytes(serialization.Encoding.PEM))
        self._created()
        write_atomic(self.issuer_key_path, _private_pem(issuer_key), mode=0o600)


def ca_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Stockade"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def ca_certificate(
    subject: x509.Name,
    subject_key: ec.EllipticCurvePublicKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    *,
    path_length: int,
) -> x509.Certificate:
    """A CA certificate (RFC 5280: basic constraints, keyCertSign and cRLSign, key ids)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(subject_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA384())
    )


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
