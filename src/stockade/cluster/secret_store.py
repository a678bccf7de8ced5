"""Secrets at rest: AES-256-GCM under a key-encryption key (KEK), rotatable without downtime.

A KEK is 32 random bytes, given to the verifier as a file or the ``STOCKADE_KEK`` environment
variable (base64 or hex). Each stored secret records the id of the KEK that encrypted it, so a
verifier started with a new current KEK plus the previous ones keeps serving every secret while
``rekey`` re-encrypts them under the current one; then the previous KEK can be dropped.

The KEK id is an HMAC of a fixed label under the key: it names the key without revealing it.
The associated data binds each ciphertext to its secret's name and version, so rows cannot be
swapped in the database to hand one secret out under another's name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stockade.errors import InputError, StockadeError

KEK_ENV = "STOCKADE_KEK"
KEK_BYTES = 32
NONCE_BYTES = 12
MAX_SECRET_BYTES = 64 * 1024
_KEK_ID_LABEL = b"stockade key-encryption key id v1"
_AAD_PREFIX = b"stockade secret v1\0"


class SecretStoreError(StockadeError):
    """A secret cannot be encrypted or decrypted (unknown or wrong KEK, corrupt row)."""

    exit_code = 2


class UnknownKek(SecretStoreError):
    """A secret is encrypted under a KEK that is not configured."""


@dataclass(frozen=True)
class KeyEncryptionKey:
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEK_BYTES:
            raise InputError(f"a key-encryption key is {KEK_BYTES} bytes, not {len(self.key)}")

    @property
    def kek_id(self) -> str:
        return hmac.new(self.key, _KEK_ID_LABEL, hashlib.sha256).hexdigest()[:16]

    @classmethod
    def generate(cls) -> KeyEncryptionKey:
        return cls(os.urandom(KEK_BYTES))

    def to_text(self) -> str:
        return base64.b64encode(self.key).decode("ascii")

    @classmethod
    def from_text(cls, text: str, source: str) -> KeyEncryptionKey:
        """32 bytes as base64 or 64 hex digits (surrounding whitespace ignored)."""
        compact = "".join(text.split())
        try:
            if len(compact) == 2 * KEK_BYTES and all(
                c in "0123456789abcdefABCDEF" for c in compact
            ):
                return cls(bytes.fromhex(compact))
            key = base64.b64decode(compact, validate=True)
        except (ValueError, binascii.Error):
            raise InputError(f"{source}: not a base64 or hex key-encryption key") from None
        if len(key) != KEK_BYTES:
            raise InputError(f"{source}: a key-encryption key is {KEK_BYTES} bytes, not {len(key)}")
        return cls(key)

    @classmethod
    def from_file(cls, path: Path) -> KeyEncryptionKey:
        try:
            if path.stat().st_mode & 0o077:
                raise InputError(f"{path} is readable by group or others; chmod 600 it")
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(f"cannot read key-encryption key {path}: {error}") from None
        return cls.from_text(text, str(path))


def _aad(name: str, version: int) -> bytes:
    return _AAD_PREFIX + name.encode() + b"\0" + str(version).encode()


@dataclass(frozen=True)
class KeyRing:
    """The current KEK (encrypts) and previous ones (still decrypt during a rotation)."""

    current: KeyEncryptionKey
    previous: tuple[KeyEncryptionKey, ...] = ()

    @property
    def keys(self) -> Mapping[str, KeyEncryptionKey]:
        return {key.kek_id: key for key in (*self.previous, self.current)}

    def knows(self, kek_id: str) -> bool:
        return kek_id in self.keys

    def encrypt(self, name: str, version: int, plaintext: bytes) -> tuple[str, bytes]:
        """(kek id, nonce || ciphertext || tag) under the current KEK."""
        if len(plaintext) > MAX_SECRET_BYTES:
            raise InputError(f"a secret is at most {MAX_SECRET_BYTES} bytes, not {len(plaintext)}")
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.current.key).encrypt(nonce, plaintext, _aad(name, version))
        return self.current.kek_id, nonce + sealed

    def decrypt(self, name: str, version: int, kek_id: str, blob: bytes) -> bytes:
        key = self.keys.get(kek_id)
        if key is None:
            raise UnknownKek(
                f"secret {name!r} is encrypted under key-encryption key {kek_id}, which is not "
                f"configured (configured: {', '.join(sorted(self.keys))})"
            )
        try:
            return AESGCM(key.key).decrypt(
                blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(name, version)
            )
        except (InvalidTag, ValueError):
            raise SecretStoreError(
                f"secret {name!r} (version {version}) does not decrypt under key-encryption key "
                f"{kek_id}: the stored row is corrupt or was moved"
            ) from None


def load_key_ring(current: Path | None, previous: tuple[Path, ...] = ()) -> KeyRing | None:
    """The ring from files, else ``$STOCKADE_KEK`` for the current key; None when neither is set
    (then the verifier refuses every secret operation: fail closed)."""
    if current is not None:
        kek = KeyEncryptionKey.from_file(current)
    elif os.environ.get(KEK_ENV):
        kek = KeyEncryptionKey.from_text(os.environ[KEK_ENV], f"${KEK_ENV}")
    else:
        if previous:
            raise InputError("previous key-encryption keys need a current one (--kek-file)")
        return None
    return KeyRing(kek, tuple(KeyEncryptionKey.from_file(path) for path in previous))
