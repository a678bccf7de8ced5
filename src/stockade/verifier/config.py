"""Verifier configuration: where its data lives and what it trusts."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from stockade.cluster.secret_store import KeyRing
from stockade.verifier.clock import SteadyClock
from stockade.verifier.errors import ConfigurationError

DEFAULT_PORT = 8443
DEFAULT_HOST = "127.0.0.1"
MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_LOG_ORIGIN = "stockade.local/verifier-log"


class EnrollmentMode(StrEnum):
    """Who admits a new machine (a new EK): the operator (``approve``, the default), an EK
    allowlist file (``allowlist``), or anyone with a genuine TPM (``open``: development)."""

    APPROVE = "approve"
    ALLOWLIST = "allowlist"
    OPEN = "open"


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
    # Cloud vTPM AK CAs (``--ak-ca``, ``--ak-ca-dir``), never mixed with the EK roots: with none,
    # an enrollment by AK certificate is refused (``stockade.evidence.ak_certificate``).
    ak_roots: Sequence[x509.Certificate] = ()
    ak_intermediates: Sequence[x509.Certificate] = ()
    # Enrollment mode ``allowlist`` admits EKs whose certificate's sha256 (hex), EK identity
    # (sha256 of the EK's SubjectPublicKeyInfo) or ``serial:<hex>`` is listed; the list also
    # restricts the other modes when given.
    ek_allowlist: frozenset[str] | None = None
    enrollment_mode: EnrollmentMode = EnrollmentMode.APPROVE
    # EK algorithms accepted ("rsa", "ecc"); None: both. A TPM holds one EK per algorithm and
    # each is an identity: with one algorithm, a revoked TPM cannot return under its other EK.
    ek_types: frozenset[str] | None = None
    # How long a pending node (mode approve) waits for the operator before it is swept.
    pending_ttl_seconds: float = 7 * 24 * 3600.0
    # How long ``stockade nodes replace`` keeps a name open for its new hardware.
    replace_ttl_seconds: float = 24 * 3600.0
    # Node-channel signatures: accepted this far from the verifier's clock (seconds).
    channel_max_skew_seconds: int = 300
    policy_id: str | None = None
    nonce_ttl_seconds: float = 30.0
    enrollment_ttl_seconds: float = 300.0
    max_body_bytes: int = MAX_BODY_BYTES
    sweep_interval_seconds: float = 1.0
    # How stale the in-memory active policy may get when another replica (or process) sharing
    # the database stores a new version; this process's own PUTs invalidate it at once.
    policy_refresh_seconds: float = 1.0
    webhook_urls: tuple[str, ...] = ()  # each event is POSTed, signed, to every URL
    # URL -> the file holding its Standard Webhooks ``whsec_`` secret(s) (``--webhook-secret
    # URL=FILE``; ``parse_webhook_secret_options``): its deliveries carry ``webhook-signature``.
    webhook_secret_files: Mapping[str, Path] = field(default_factory=dict)
    # Secrets at rest are encrypted under this ring's current key; None refuses every secret
    # operation (fail closed).
    key_ring: KeyRing | None = None
    # Bearer token for the secrets and labels API; None: made once in <data_dir>/operator-token.
    operator_token: str | None = None
    # Named credentials, one per line: <name> <operator|reader> sha256:<hex of the token>
    # (stockade.verifier.operator_auth.load_credentials); None: the built-in tokens only.
    credentials_file: Path | None = None
    # GET /v1/events: concurrent streams in all and per client (credential and address), and
    # how long one stream lasts before it ends (clients resume with Last-Event-ID).
    max_event_streams: int = 64
    max_event_streams_per_client: int = 4
    event_stream_max_seconds: float = 3600.0
    # Unauthenticated enrollment calls per client address (burst 20; stockade.verifier.rate_limit).
    enrollment_rate_per_minute: float = 60.0
    # How long a signed node status statement (GET /v1/nodes/{id}/status) stays valid.
    status_validity_seconds: float = 60.0
    # The transparency log's origin (first line of every checkpoint) and its key's name;
    # the key in <data_dir>/keys/ is made for it on first start and refuses another.
    log_origin: str = DEFAULT_LOG_ORIGIN
    verifier_build: str = field(default_factory=_version)
    # Every deadline is measured with this clock; the default never steps back (a wall-clock
    # step back is ignored, a forward step adopted: stockade.verifier.clock).
    clock: Callable[[], datetime] = field(default_factory=SteadyClock)
    # How far this verifier's clock may be behind the newest time stored (by it before a
    # restart, or by another replica) before it refuses to issue nonces, results and signed
    # statuses (503 clock-behind).
    clock_skew_seconds: float = 5.0
    # Keys every replica shares, read from this directory and never written (``--keys-dir``:
    # a mounted Kubernetes Secret, made once by ``stockade verifier keys``;
    # ``stockade.verifier.shared_keys``). None: each key is made on first start in the data
    # directory, as a single verifier does.
    keys_dir: Path | None = None
    # An operator-issued TLS certificate and key (``--tls-cert``, ``--tls-key``) served instead
    # of one issued by the verifier's own (or the shared) TLS CA.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Run ``alembic upgrade head`` on start; False (``--no-migrate``): refuse to start unless
    # the schema is already at head (``stockade verifier migrate`` ran it).
    migrate_on_start: bool = True
    # The stale sweeper runs on one replica at a time: the holder of the ``sweeper`` lease
    # (database clock), renewed every sweep, taken over this long after its holder stopped
    # renewing it (``stockade.verifier.leadership``).
    leader_lease_seconds: float = 10.0
    # This process's number among the worker processes of one ``serve --workers N`` (0 for the
    # first, or the only one): each is a replica of its own, with its own state directory.
    worker: int = 0

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'verifier.db'}"

    @property
    def keys_directory(self) -> Path:
        """Where the shared keys are read: ``keys_dir``, or ``<data_dir>/keys`` (made there on
        first start). The transparency log's note key (``log-signing-key``, ``log-key.pub``)
        is read here too; with ``keys_read_only`` it is loaded, never made."""
        return self.keys_dir if self.keys_dir is not None else self.data_dir / "keys"

    @property
    def keys_read_only(self) -> bool:
        """True when the keys come from ``--keys-dir``: a missing key is an error, not made."""
        return self.keys_dir is not None

    @property
    def state_directory(self) -> Path:
        """This replica's own writable state (``<data_dir>/state``: the newest checkpoint it
        signed; ``<data_dir>/state/worker-N`` for worker N > 0 of ``serve --workers``), never
        shared between replicas."""
        state = self.data_dir / "state"
        return state if self.worker == 0 else state / f"worker-{self.worker}"


def parse_webhook_secret_options(options: Sequence[str], urls: Sequence[str]) -> dict[str, Path]:
    """``--webhook-secret URL=FILE`` options as ``VerifierConfig.webhook_secret_files``: split
    at the last ``=`` (a URL may hold one, in its query); the URL must be one of ``urls`` (the
    ``--webhook`` URLs) and be given one file. The secret itself is only ever in the file."""
    files: dict[str, Path] = {}
    for option in options:
        url, equals, file = option.rpartition("=")
        if not equals or not url or not file:
            raise ConfigurationError(
                f"--webhook-secret {option!r}: give URL=FILE (the file holds the whsec_ secret)"
            )
        if url not in urls:
            raise ConfigurationError(f"--webhook-secret {url}: no --webhook gives that URL")
        if url in files:
            raise ConfigurationError(f"--webhook-secret {url}: given twice")
        files[url] = Path(file)
    return files


def load_ca_files(
    paths: Sequence[Path], what: str = "EK CA"
) -> tuple[list[x509.Certificate], list[x509.Certificate]]:
    """Split the certificates in PEM/DER files into self-signed roots and intermediates."""
    roots: list[x509.Certificate] = []
    intermediates: list[x509.Certificate] = []
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ConfigurationError(f"cannot read {what} file {path}: {error}") from None
        try:
            certs = (
                x509.load_pem_x509_certificates(data)
                if b"-----BEGIN" in data
                else [x509.load_der_x509_certificate(data)]
            )
        except ValueError as error:
            raise ConfigurationError(f"{what} file {path} holds no certificate: {error}") from None
        for cert in certs:
            (roots if _self_signed(cert) else intermediates).append(cert)
    return roots, intermediates


# What a bundle of EK CA certificates holds: vendors publish PEM (.pem, .crt) and DER (.cer,
# .der, .crt); anything else in the directory (a README, a signature) is not read.
CA_SUFFIXES = frozenset((".pem", ".crt", ".cer", ".der"))


def ca_directory_files(directory: Path, option: str = "--ek-ca-dir") -> list[Path]:
    """The certificate files of a CA bundle directory (``--ek-ca-dir``, or ``option``, e.g.
    ``--ak-ca-dir``), searched recursively in a stable order. The roots decide which TPMs are
    genuine, so a directory or file others may write is refused (group write only for this
    process's own group, as a Kubernetes ``fsGroup`` volume has), and so is a bundle with no
    certificate at all."""
    try:
        if not directory.is_dir():
            raise ConfigurationError(f"{option} {directory} is not a directory")
        # Hidden entries are skipped: a Kubernetes ConfigMap volume keeps its files in
        # "..<timestamp>/" behind the visible symlinks, which are what is read.
        found = sorted(
            path
            for path in directory.rglob("*")
            if path.suffix.lower() in CA_SUFFIXES
            and path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(directory).parts)
        )
        for path in [directory, *{p.parent for p in found}, *found]:
            _refuse_writable_by_others(path, option)
    except OSError as error:
        raise ConfigurationError(f"cannot read the {option} bundle {directory}: {error}") from None
    if not found:
        raise ConfigurationError(
            f"{option} {directory} holds no certificate file "
            f"({', '.join(sorted(CA_SUFFIXES))}): every enrollment would be refused"
        )
    return found


def _refuse_writable_by_others(path: Path, option: str) -> None:
    status = path.stat()  # through symlinks: what is read is what counts
    if status.st_mode & 0o002 or (status.st_mode & 0o020 and status.st_gid != os.getegid()):
        what = "AK CA" if option.startswith("--ak") else "EK CA"
        raise ConfigurationError(
            f"{what} bundle: {path} is writable by others (mode {status.st_mode & 0o777:04o}): "
            "whoever can write it decides which TPMs are genuine"
        )


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.subject != cert.issuer:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def normalize_ek_entry(text: str) -> str | None:
    """An EK named by ``serial:<hex>`` (the EK certificate's serial) or a sha256 hex fingerprint
    (of the certificate's DER, or the EK identity), in the one form they are compared in;
    None when it is neither."""
    value = text.strip().lower()
    if value.startswith("serial:"):
        serial = value.removeprefix("serial:").removeprefix("0x").lstrip("0") or "0"
        if len(serial) <= 40 and all(c in "0123456789abcdef" for c in serial):
            return f"serial:{serial}"
        return None
    value = value.removeprefix("sha256:").replace(":", "")
    if len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value
    return None


def load_allowlist(path: Path) -> frozenset[str]:
    """One EK per line (``normalize_ek_entry``), ``#`` comments: a sha256 hex fingerprint (of
    the EK certificate's DER, or the EK identity: sha256 of its SubjectPublicKeyInfo), or
    ``serial:<hex>`` (the EK certificate's serial number; serials are unique only per vendor
    CA, prefer fingerprints)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigurationError(f"cannot read EK allowlist {path}: {error}") from None
    entries: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        entry = normalize_ek_entry(line)
        if entry is None:
            raise ConfigurationError(
                f"{path}:{number}: not a sha256 hex fingerprint or serial:<hex>: {raw!r}"
            )
        entries.add(entry)
    return frozenset(entries)
