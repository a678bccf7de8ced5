"""Private key files: P-256 keys as PKCS#8 PEM, created 0600 with O_EXCL, and refused when
group or others can read them (the verifier's TLS and EAR keys, the cluster CA key)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.errors import StockadeError


class KeyFileError(StockadeError):
    """A private key file is unreadable, not a P-256 key, or readable by others."""

    exit_code = 2


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Create ``path`` (never overwrite) holding ``key``, mode 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as error:
        raise KeyFileError(f"cannot load private key {path}: {error}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{path} is not a P-256 private key")
    if path.stat().st_mode & 0o077:
        raise KeyFileError(f"{path} is readable by group or others; chmod 600 it")
    return key
