"""The verifier's own keys, made on first start in the data directory (private keys 0600).

- ``tls/ca.pem``: a self-signed CA clients pin; ``tls/server.pem`` + ``tls/server-key.pem``:
  the HTTPS certificate it issued for the serving host (127.0.0.1, localhost).
- ``keys/ear-signing-key.pem``: the P-256 key that signs Attestation Results (ES256), node
  status, fleet trust and secret-release statements; ``keys/verifier-key.pub.pem`` its public
  key, which relying parties pin (``--verifier-key``).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stockade.certificates import key_usage
from stockade.home import write_atomic
from stockade.keyfiles import KeyFileError, load_private_key, write_private_key
from stockade.statements import spki_kid
from stockade.verifier.errors import ConfigurationError

CA_VALIDITY = datetime.timedelta(days=3650)
SERVER_VALIDITY = datetime.timedelta(days=825)


@dataclass(frozen=True)
class TlsFiles:
    """What uvicorn serves; ``ca_cert`` is None for an operator-issued certificate
    (``--tls-cert``: clients trust the operator's CA, which the verifier never sees)."""

    ca_cert: Path | None
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class SigningKey:
    """The EAR signing key and its ``kid`` (sha256 of the SPKI DER, hex)."""

    path: Path
    private_key: ec.EllipticCurvePrivateKey

    @property
    def kid(self) -> str:
        return spki_kid(self.private_key.public_key())


_write_private = write_private_key


def _load_private(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        return load_private_key(path)
    except KeyFileError as error:
        raise ConfigurationError(str(error)) from None


SIGNING_KEY_NAME = "ear-signing-key.pem"


def load_signing_key(path: Path) -> SigningKey:
    """The EAR signing key in ``path``, never made (a read-only directory of shared keys);
    a public key file beside it (``verifier-key.pub.pem``) must be its public key."""
    key = SigningKey(path, _load_private(path))
    public_path = path.parent / PUBLIC_KEY_NAME
    try:
        published = public_path.read_bytes()
    except FileNotFoundError:
        return key
    except OSError as error:
        raise ConfigurationError(f"cannot read {public_path}: {error.strerror}") from None
    if published.strip() != _public_pem(key).strip():
        raise ConfigurationError(
            f"{public_path} is not the public key of {path}: relying parties pinning it would "
            "refuse every statement"
        )
    return key


def _public_pem(key: SigningKey) -> bytes:
    return key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_or_create_signing_key(data_dir: Path) -> SigningKey:
    path = data_dir / "keys" / SIGNING_KEY_NAME
    if not path.exists():
        _write_private(path, ec.generate_private_key(ec.SECP256R1()))
    key = SigningKey(path, _load_private(path))
    public = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    public_path = path.parent / PUBLIC_KEY_NAME
    if not public_path.exists() or public_path.read_bytes() != public:
        with contextlib.suppress(OSError):  # a read-only keys directory: the operator exports it
            write_atomic(public_path, public, mode=0o644)
    return key


PUBLIC_KEY_NAME = "verifier-key.pub.pem"


def load_or_create_tls(
    data_dir: Path, host: str, shared_ca: tuple[Path, Path] | None = None
) -> TlsFiles:
    """The CA and a server certificate naming ``host``; reissued if ``host`` is not named.

    With ``shared_ca`` (certificate, key: the TLS CA every replica shares, from
    ``--keys-dir``) that CA is never made or written: its certificate is copied to
    ``tls/ca.pem`` (what clients pin) and this replica's server certificate is issued from
    it into ``tls/``."""
    directory = data_dir / "tls"
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    if shared_ca is not None:
        return _issued_from_shared_ca(files, host, *shared_ca)
    ca_key_path = directory / "ca-key.pem"
    assert files.ca_cert is not None
    if not files.ca_cert.exists():
        ca_key = ec.generate_private_key(ec.SECP256R1())
        _write_private(ca_key_path, ca_key)
        files.ca_cert.write_bytes(_ca_certificate(ca_key).public_bytes(serialization.Encoding.PEM))
        for stale in (files.server_cert, files.server_key):
            stale.unlink(missing_ok=True)
    if files.server_cert.exists() and _names_host(files.server_cert, host):
        return files
    ca_key = _load_private(ca_key_path)
    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    server_key = ec.generate_private_key(ec.SECP256R1())
    files.server_key.unlink(missing_ok=True)
    _write_private(files.server_key, server_key)
    certificate = _server_certificate(ca_cert, ca_key, server_key, host)
    files.server_cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return files


def _issued_from_shared_ca(files: TlsFiles, host: str, cert_path: Path, key_path: Path) -> TlsFiles:
    ca_key = _load_private(key_path)
    try:
        ca_pem = cert_path.read_bytes()
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) else error
        raise ConfigurationError(
            f"cannot load the TLS CA certificate {cert_path}: {reason}"
        ) from None
    if ca_cert.public_key() != ca_key.public_key():
        raise ConfigurationError(f"{cert_path} does not certify the key in {key_path}")
    assert files.ca_cert is not None
    directory = files.ca_cert.parent
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not files.ca_cert.exists() or files.ca_cert.read_bytes() != ca_pem:
        write_atomic(files.ca_cert, ca_pem, mode=0o644)
        for stale in (files.server_cert, files.server_key):  # issued by another CA
            stale.unlink(missing_ok=True)
    if files.server_cert.exists() and _names_host(files.server_cert, host):
        return files
    server_key = ec.generate_private_key(ec.SECP256R1())
    files.server_key.unlink(missing_ok=True)
    _write_private(files.server_key, server_key)
    certificate = _server_certificate(ca_cert, ca_key, server_key, host)
    write_atomic(files.server_cert, certificate.public_bytes(serialization.Encoding.PEM))
    return files


def operator_tls(cert_path: Path, key_path: Path) -> TlsFiles:
    """An operator-issued certificate and its key (``--tls-cert``, ``--tls-key``), checked
    before uvicorn reads them: the certificate parses and is in date, the key is its key and
    not readable by group or others. Any key type the operator's CA issues for is accepted."""
    try:
        certificate = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) else error
        raise ConfigurationError(f"--tls-cert {cert_path}: cannot load: {reason}") from None
    try:
        if key_path.stat().st_mode & 0o077:
            raise ConfigurationError(
                f"--tls-key {key_path} is readable by group or others; chmod 600 it"
            )
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        problem = error.strerror if isinstance(error, OSError) else str(error)
        raise ConfigurationError(f"--tls-key {key_path}: cannot load: {problem}") from None
    if certificate.public_key() != key.public_key():
        raise ConfigurationError(f"--tls-key {key_path} is not the key of --tls-cert {cert_path}")
    now = datetime.datetime.now(datetime.UTC)
    if not certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc:
        raise ConfigurationError(
            f"--tls-cert {cert_path} is valid only from {certificate.not_valid_before_utc} "
            f"to {certificate.not_valid_after_utc}"
        )
    return TlsFiles(None, cert_path, key_path)


def write_new_ca(cert_path: Path, key_path: Path) -> None:
    """A new TLS CA (what ``tls/ca.pem`` holds) written to these files, the key 0600; neither
    may exist yet (``stockade verifier keys``)."""
    if cert_path.exists():
        raise ConfigurationError(f"{cert_path} exists; refusing to overwrite a CA")
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        _write_private(key_path, key)
    except OSError as error:
        raise ConfigurationError(f"cannot create {key_path}: {error.strerror}") from None
    write_atomic(cert_path, _ca_certificate(key).public_bytes(serialization.Encoding.PEM))


def _names_host(cert_path: Path, host: str) -> bool:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    if cert.not_valid_after_utc < datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1):
        return False
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    try:
        return ipaddress.ip_address(host) in names.get_values_for_type(x509.IPAddress)
    except ValueError:
        return host in names.get_values_for_type(x509.DNSName)


def _ca_certificate(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stockade verifier CA")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            key_usage(ca=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _server_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    host: str,
) -> x509.Certificate:
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    try:
        address = ipaddress.ip_address(host)
        if x509.IPAddress(address) not in names:
            names.append(x509.IPAddress(address))
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + SERVER_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
