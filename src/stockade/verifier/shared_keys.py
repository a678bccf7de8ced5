"""The keys every replica of one verifier shares, and where each replica reads them.

A single verifier makes its keys on first start in its data directory (``<data_dir>/keys``,
``tls/``, ``cluster-ca/``, the tokens). Replicas behind one Service must sign with the same
keys, or a relying party pinning one replica's key refuses the others' statements, a session
cookie from one is refused by the next, and the transparency log has as many keys as
replicas. So ``stockade verifier keys --out DIR`` makes them once (``create_keys``), the
operator makes a Secret of DIR, and every replica reads it with ``verifier serve --keys-dir``:
read only, never written, each file checked as a single verifier checks its own (private keys
and tokens 0600, the log key named after the log's origin, each certificate certifying its
key). The directory is flat, as a Kubernetes Secret volume is, and read through its
symlinks (a Secret's files point into ``..data/``, which kubelet swaps atomically).

What stays per replica: ``<data_dir>/state`` (the newest checkpoint this replica signed) and
``<data_dir>/tls`` (its server certificate, issued from the shared TLS CA for its ``--host``,
unless ``--tls-cert`` names an operator-issued one).

Every function takes the ``VerifierConfig``: without ``keys_dir`` it is today's
load-or-create in the data directory; with it, a missing or unreadable file is a one-line
``ConfigurationError`` (exit code 2), never a traceback and never a new key.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.cluster.ca import ClusterCa, ClusterCaError
from stockade.home import write_atomic
from stockade.keyfiles import KeyFileError, write_private_key
from stockade.translog.checkpoint import NoteSigner
from stockade.translog.errors import MalformedKey
from stockade.translog.keys import write_key_pair
from stockade.verifier.config import DEFAULT_LOG_ORIGIN, VerifierConfig
from stockade.verifier.errors import ConfigurationError
from stockade.verifier.operator_auth import (
    OPERATOR_TOKEN_FILE,
    READER_TOKEN_FILE,
    Authority,
    load_or_create_operator_token,
    new_session_key,
    read_token,
)
from stockade.verifier.tls import (
    PUBLIC_KEY_NAME,
    SIGNING_KEY_NAME,
    SigningKey,
    TlsFiles,
    load_or_create_signing_key,
    load_or_create_tls,
    load_signing_key,
    operator_tls,
    write_new_ca,
)

EAR_SIGNING_KEY = SIGNING_KEY_NAME  # ear-signing-key.pem
VERIFIER_PUBLIC_KEY = PUBLIC_KEY_NAME  # verifier-key.pub.pem (public: relying parties pin it)
LOG_SIGNING_KEY = "log-signing-key"
LOG_PUBLIC_KEY = "log-key.pub"
SESSION_KEY = "session-key"
OPERATOR_TOKEN = OPERATOR_TOKEN_FILE
READER_TOKEN = READER_TOKEN_FILE
CLUSTER_CA_CERT = "cluster-ca.pem"
CLUSTER_CA_KEY = "cluster-ca-key.pem"
TLS_CA_CERT = "tls-ca.pem"
TLS_CA_KEY = "tls-ca-key.pem"

# What every replica needs whatever serves its TLS (the TLS CA is not needed with --tls-cert).
REQUIRED = (
    EAR_SIGNING_KEY,
    LOG_SIGNING_KEY,
    SESSION_KEY,
    OPERATOR_TOKEN,
    READER_TOKEN,
    CLUSTER_CA_CERT,
    CLUSTER_CA_KEY,
)


def check_keys_dir(directory: Path) -> None:
    """Refuse (one line) a keys directory that is not a readable directory or lacks a file
    every replica needs; each file is checked again, in full, when it is loaded."""
    if not directory.is_dir():
        raise ConfigurationError(f"--keys-dir {directory} is not a directory")
    if not os.access(directory, os.R_OK | os.X_OK):
        raise ConfigurationError(f"--keys-dir {directory} is not readable by this user")
    missing = [name for name in REQUIRED if not _readable_file(directory / name)]
    if missing:
        raise ConfigurationError(
            f"--keys-dir {directory} lacks (or cannot read) {', '.join(missing)}: make the "
            "directory with `stockade verifier keys --out DIR`"
        )


def _readable_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode) and os.access(path, os.R_OK)
    except OSError:
        return False


def _shared(config: VerifierConfig) -> Path | None:
    return config.keys_dir


def signing_key(config: VerifierConfig) -> SigningKey:
    """The EAR and statement signing key (its ``verifier-key.pub.pem``, when present, must be
    its public key)."""
    directory = _shared(config)
    if directory is None:
        return load_or_create_signing_key(config.data_dir)
    return load_signing_key(directory / EAR_SIGNING_KEY)


def operator_token(config: VerifierConfig) -> str:
    directory = _shared(config)
    if directory is None:
        return load_or_create_operator_token(config.data_dir)
    return read_token(directory / OPERATOR_TOKEN, "operator token")


def authority(config: VerifierConfig, operator: str) -> Authority:
    """The credentials and session key: the reader token and the session key from the keys
    directory when there is one."""
    return Authority.load(
        config.data_dir, operator, config.credentials_file, config.clock, keys_dir=config.keys_dir
    )


def cluster_ca(config: VerifierConfig) -> ClusterCa:
    directory = _shared(config)
    try:
        if directory is None:
            return ClusterCa.load_or_create(config.data_dir / "cluster-ca")
        return ClusterCa.load(directory / CLUSTER_CA_KEY, directory / CLUSTER_CA_CERT)
    except (ClusterCaError, KeyFileError) as error:
        raise ConfigurationError(f"cluster CA: {error}") from None


def serving_tls(config: VerifierConfig, host: str) -> TlsFiles:
    """What this replica serves HTTPS with: the operator's certificate (``tls_cert``), or a
    certificate for ``host`` issued into ``<data_dir>/tls`` by the shared TLS CA (with
    ``keys_dir``) or by this verifier's own CA (made on first start)."""
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigurationError("--tls-cert and --tls-key go together")
    if config.tls_cert is not None and config.tls_key is not None:
        return operator_tls(config.tls_cert, config.tls_key)
    directory = _shared(config)
    if directory is None:
        return load_or_create_tls(config.data_dir, host)
    ca = (directory / TLS_CA_CERT, directory / TLS_CA_KEY)
    absent = [path.name for path in ca if not _readable_file(path)]
    if absent:
        raise ConfigurationError(
            f"--keys-dir {directory} lacks (or cannot read) {', '.join(absent)}: give "
            "--tls-cert and --tls-key, or make the directory with `stockade verifier keys`"
        )
    return load_or_create_tls(config.data_dir, host, shared_ca=ca)


def create_keys(out: Path, log_origin: str = DEFAULT_LOG_ORIGIN) -> list[Path]:
    """Make every shared key in ``out`` (created 0700; it must hold none of them yet), private
    files 0600; return the files made. ``--keys-dir out`` then serves with them."""
    try:
        out.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigurationError(f"cannot create {out}: {error.strerror}") from None
    names = (*REQUIRED, LOG_PUBLIC_KEY, VERIFIER_PUBLIC_KEY, TLS_CA_CERT, TLS_CA_KEY)
    present = [name for name in names if (out / name).exists() or (out / name).is_symlink()]
    if present:
        raise ConfigurationError(
            f"{out} already holds {', '.join(present)}; refusing to replace shared keys"
        )
    try:
        write_key_pair(NoteSigner.generate(log_origin), out / LOG_SIGNING_KEY, out / LOG_PUBLIC_KEY)
    except MalformedKey as error:
        raise ConfigurationError(f"transparency log key: {error}") from None
    statement_key = ec.generate_private_key(ec.SECP256R1())
    write_private_key(out / EAR_SIGNING_KEY, statement_key)
    public = statement_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_atomic(out / VERIFIER_PUBLIC_KEY, public, mode=0o644)
    for name, content in (
        (SESSION_KEY, new_session_key()),
        (OPERATOR_TOKEN, _token_bytes()),
        (READER_TOKEN, _token_bytes()),
    ):
        _create_private(out / name, content)
    try:
        ClusterCa.create_files(out / CLUSTER_CA_KEY, out / CLUSTER_CA_CERT)
    except ClusterCaError as error:
        raise ConfigurationError(f"cluster CA: {error}") from None
    write_new_ca(out / TLS_CA_CERT, out / TLS_CA_KEY)
    return [out / name for name in names]


def _token_bytes() -> bytes:
    import secrets

    return (secrets.token_urlsafe(32) + "\n").encode()


def _create_private(path: Path, content: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise ConfigurationError(f"cannot create {path}: {error.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
