"""Typed errors for OS releases: hash trees, envelopes, keys, manifests, PE images.

Unreadable or malformed input is an ``InputError`` (exit 2); a well-formed
thing that fails a check is a ``VerificationFailed`` (exit 1). Each names
what failed: the block, the key, the file, the field.
"""

from __future__ import annotations

from stockade.errors import InputError, VerificationFailed


class ReleaseError(InputError):
    """Base class for malformed release inputs."""


class VerityFormatError(ReleaseError):
    """A hash device or data image that cannot be a dm-verity pair (bad superblock, sizes)."""


class VerityMismatch(VerificationFailed):
    """The data or the hash tree does not match the expected root hash.

    ``data_block`` is the index of the first data block whose digest differs,
    ``hash_block`` the index (in the hash device, superblock included) of the first
    hash tree block that does not match its parent; at most one of them is set.
    """

    def __init__(
        self, detail: str, *, data_block: int | None = None, hash_block: int | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.data_block = data_block
        self.hash_block = hash_block


class EnvelopeMalformed(ReleaseError):
    """Bytes that are not a DSSE envelope."""


class SignatureInvalid(VerificationFailed):
    """A DSSE envelope lacks enough valid signatures from trusted keys, or has the wrong type."""


class KeyFileError(ReleaseError):
    """A key or certificate file that cannot be read, or of a type Stockade does not accept."""


class KeyExists(ReleaseError):
    """``keys generate`` would overwrite an existing key file."""


class NotPeImage(ReleaseError):
    """Bytes that are not a PE/COFF image Authenticode can hash; names the field and offset."""

    def __init__(self, reason: str, offset: int | None = None) -> None:
        where = f" at byte offset {offset}" if offset is not None else ""
        super().__init__(f"not a PE/COFF image: {reason}{where}")
        self.reason = reason
        self.offset = offset


class ManifestMalformed(ReleaseError):
    """A release manifest that does not follow the schema; names the field."""


class ReleaseInvalid(VerificationFailed):
    """A signed release whose artifacts or security version do not hold."""
