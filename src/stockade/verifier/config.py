"""Verifier configuration: where its data lives and what it trusts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from stockade.cluster.secret_store import KeyRing
from stockade.verifier.errors import ConfigurationError

DEFAULT_PORT = 8443
DEFAULT_HOST = "127.0.0.1"
MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_LOG_ORIGIN = "stockade.local/verifier-log"


def utc_now() -> datetime:
    return datetime.now(UTC)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stockade")
    except PackageNotFoundError:
        return "0+unknown"


@dataclass
class VerifierConfig:
    """Everything :func:`stockade.verifier.create_app` needs.

    ``database_url`` defaults to SQLite (WAL) at ``<data_dir>/verifier.db``.
    With no ``ek_roots`` every enrollment is refused (fail closed).
    """

    data_dir: Path
    database_url: str | None = None
    ek_roots: Sequence[x509.Certificate] = ()
    ek_intermediates: Sequence[x509.Certificate] = ()
    ek_allowlist: frozenset[str] | None = None  # sha256 hex of EK TPM2B_PUBLIC
    policy_id: str | None = None
    nonce_ttl_seconds: float = 30.0
    enrollment_ttl_seconds: float = 300.0
    max_body_bytes: int = MAX_BODY_BYTES
    sweep_interval_seconds: float = 1.0
    # How stale the in-memory active policy may get when another replica (or process) sharing
    # the database stores a new version; this process's own PUTs invalidate it at once.
    policy_refresh_seconds: float = 1.0
    webhook_urls: tuple[str, ...] = ()  # each event is POSTed, signed, to every URL
    # Secrets at rest are encrypted under this ring's current key; None refuses every secret
    # operation (fail closed).
    key_ring: KeyRing | None = None
    # Bearer token for the secrets and labels API; None: made once in <data_dir>/operator-token.
    operator_token: str | None = None
    # How long a signed node status statement (GET /v1/nodes/{id}/status) stays valid.
    status_validity_seconds: float = 60.0
    # The transparency log's origin (first line of every checkpoint) and its key's name;
    # the key in <data_dir>/keys/ is made for it on first start and refuses another.
    log_origin: str = DEFAULT_LOG_ORIGIN
    verifier_build: str = field(default_factory=_version)
    clock: Callable[[], datetime] = utc_now

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'verifier.db'}"


def load_ca_files(paths: Sequence[Path]) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """Split the certificates in PEM/DER files into self-signed roots and intermediates."""
    roots: list[x509.Certificate] = []
    intermediates: list[x509.Certificate] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ConfigurationError(f"cannot read EK CA file {path}: {error}") from None
        try:
            certs = (
                x509.load_pem_x509_certificates(data)
                if b"-----BEGIN" in data
                else [x509.load_der_x509_certificate(data)]
            )
        except ValueError as error:
            raise ConfigurationError(f"EK CA file {path} holds no certificate: {error}") from None
        for cert in certs:
            (roots if _self_signed(cert) else intermediates).append(cert)
    return roots, intermediates


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def load_allowlist(path: Path) -> frozenset[str]:
    """One EK fingerprint (sha256 hex of the EK TPM2B_PUBLIC) per line; ``#`` comments."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigurationError(f"cannot read EK allowlist {path}: {error}") from None
    entries: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip().lower()
        if not line:
            continue
        if len(line) != 64 or any(c not in "0123456789abcdef" for c in line):
            raise ConfigurationError(f"{path}:{number}: not a sha256 hex fingerprint: {raw!r}")
        entries.add(line)
    return frozenset(entries)
