"""Release manifests: what an OS release is, serialized canonically, signed as DSSE.

A release is a kernel, an initrd, a kernel command line, a read-only /usr image
with its dm-verity hash tree, a version string and a security version that only
ever increases. Pure: no file I/O and no clock (``created`` is given).

Canonical form: ``stockade.strict_json.canonical_json`` (sorted keys, no whitespace; every
field of a manifest is ASCII, so the bytes are the same as ``ensure_ascii`` JSON);
``manifest_digest`` is the SHA-256 of those bytes, and a signed manifest must be
exactly its canonical form, so one manifest has one digest.

The /usr image is bound into the measured boot by the kernel command line: it
carries ``usrhash=<dm-verity root hash>``, the parameter systemd's
veritysetup-generator reads to open /usr with that root hash. The boot chain
measures the command line (PCR 8 or 9, as grub and systemd-stub do), so a node
booted with another /usr root hash shows a different measurement. The command line
is read as the kernel and systemd read it (``stockade.release.cmdline``): a manifest
whose command line does not carry exactly one ``usrhash=`` with its own root hash, can
be read two ways, or carries a parameter that could mount another /usr is malformed
(``CmdlineRefused``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any
from uuid import UUID

from stockade.release import dsse
from stockade.release.cmdline import (
    USRHASH,
    CmdlineRefused,
    UsrHash,
    check_usr_binding,
    parse_cmdline,
)
from stockade.release.errors import ManifestMalformed, ReleaseInvalid
from stockade.release.keys import SigningKey, VerifyingKey
from stockade.strict_json import (
    canonical_json,
    loads_strict,
    read_hex,
    read_integer,
    read_object,
    read_string,
)

SCHEMA_VERSION = 1
PAYLOAD_TYPE = "application/vnd.stockade.release-manifest.v1+json"
USRHASH_PARAMETER = USRHASH
MAX_SECURITY_VERSION = 2**63 - 1
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
# A release's name and version: printable ASCII (they are measured as text into PCR 12 and
# shown in reasons and logs), so every field of a manifest is ASCII and its canonical bytes
# are the same under any JSON escaping rule.
_LABEL = re.compile(r"[\x20-\x7e]{1,128}")

MAX_MANIFEST = 1024 * 1024


def format_time(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        raise ManifestMalformed("created time must be timezone-aware (UTC)")
    return moment.astimezone(dt.UTC).strftime(_TIME_FORMAT)


@dataclass(frozen=True)
class FileDigest:
    """A file of the release: its name in the release directory, size and SHA-256."""

    path: str
    size: int
    sha256: bytes

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256.hex()}

    @classmethod
    def from_json(cls, value: Any, where: str) -> FileDigest:
        fields = _object(value, where, {"path", "size", "sha256"})
        return cls(
            path=_file_name(fields["path"], f"{where}.path"),
            size=_integer(fields["size"], f"{where}.size"),
            sha256=_digest(fields["sha256"], f"{where}.sha256"),
        )


@dataclass(frozen=True)
class KernelFile:
    """The kernel; ``authenticode_sha256`` is its PE/COFF Authenticode digest, what UEFI
    measures into PCR 4 when it loads the kernel as an EFI application (None when the
    kernel is not a PE image)."""

    file: FileDigest
    authenticode_sha256: bytes | None

    def to_json(self) -> dict[str, Any]:
        authenticode = self.authenticode_sha256
        return {
            **self.file.to_json(),
            "authenticode_sha256": authenticode.hex() if authenticode is not None else None,
        }

    @classmethod
    def from_json(cls, value: Any, where: str) -> KernelFile:
        fields = _object(value, where, {"path", "size", "sha256", "authenticode_sha256"})
        authenticode = fields["authenticode_sha256"]
        return cls(
            file=FileDigest.from_json(
                {key: fields[key] for key in ("path", "size", "sha256")}, where
            ),
            authenticode_sha256=None
            if authenticode is None
            else _digest(authenticode, f"{where}.authenticode_sha256"),
        )


@dataclass(frozen=True)
class VerityInfo:
    """The dm-verity parameters of the /usr image, as its hash file's superblock holds them."""

    root_hash: bytes
    salt: bytes
    hash_algorithm: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    uuid: UUID
    hash_file: FileDigest

    def to_json(self) -> dict[str, Any]:
        return {
            "root_hash": self.root_hash.hex(),
            "salt": self.salt.hex(),
            "hash_algorithm": self.hash_algorithm,
            "data_block_size": self.data_block_size,
            "hash_block_size": self.hash_block_size,
            "data_blocks": self.data_blocks,
            "uuid": str(self.uuid),
            "hash_file": self.hash_file.to_json(),
        }

    @classmethod
    def from_json(cls, value: Any, where: str) -> VerityInfo:
        fields = _object(
            value,
            where,
            {"root_hash", "salt", "hash_algorithm", "data_block_size", "hash_block_size",
             "data_blocks", "uuid", "hash_file"},
        )  # fmt: skip
        uuid_text = _string(fields["uuid"], f"{where}.uuid")
        try:
            uuid = UUID(uuid_text)
        except ValueError:
            raise ManifestMalformed(f"{where}.uuid '{uuid_text}' is not a UUID") from None
        if str(uuid) != uuid_text:
            raise ManifestMalformed(f"{where}.uuid '{uuid_text}' is not in canonical form")
        return cls(
            root_hash=_hex(fields["root_hash"], f"{where}.root_hash"),
            salt=_hex(fields["salt"], f"{where}.salt"),
            hash_algorithm=_string(fields["hash_algorithm"], f"{where}.hash_algorithm"),
            data_block_size=_integer(fields["data_block_size"], f"{where}.data_block_size"),
            hash_block_size=_integer(fields["hash_block_size"], f"{where}.hash_block_size"),
            data_blocks=_integer(fields["data_blocks"], f"{where}.data_blocks"),
            uuid=uuid,
            hash_file=FileDigest.from_json(fields["hash_file"], f"{where}.hash_file"),
        )


@dataclass(frozen=True)
class UsrImage:
    """The read-only /usr image. Its integrity is the dm-verity root hash (no whole-file
    SHA-256: the root hash already binds every block, and a second pass would double the
    cost of verifying a large image)."""

    path: str
    size: int
    verity: VerityInfo

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "verity": self.verity.to_json()}

    @classmethod
    def from_json(cls, value: Any, where: str) -> UsrImage:
        fields = _object(value, where, {"path", "size", "verity"})
        return cls(
            path=_file_name(fields["path"], f"{where}.path"),
            size=_integer(fields["size"], f"{where}.size"),
            verity=VerityInfo.from_json(fields["verity"], f"{where}.verity"),
        )


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    security_version: int
    created: dt.datetime
    cmdline: str
    kernel: KernelFile
    initrd: FileDigest
    usr: UsrImage

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``ManifestMalformed`` when the manifest contradicts itself."""
        if not 0 <= self.security_version <= MAX_SECURITY_VERSION:
            raise ManifestMalformed(
                f"security_version {self.security_version} is outside 0..{MAX_SECURITY_VERSION}"
            )
        for field, value in (("name", self.name), ("version", self.version)):
            if not _LABEL.fullmatch(value):
                raise ManifestMalformed(
                    f"{field} {value!r} must be 1 to 128 printable ASCII characters"
                )
        wanted = self.usr.verity.root_hash.hex()
        bound = usrhash_parameter(self.cmdline)
        if bound is None or bound.value != wanted:
            raise CmdlineRefused(
                f"cmdline must carry exactly one {USRHASH_PARAMETER}={wanted} "
                f"(found {bound.text if bound else 'none'})"
            )
        verity = self.usr.verity
        if self.usr.size != verity.data_blocks * verity.data_block_size:
            raise ManifestMalformed(
                f"usr.size {self.usr.size} is not data_blocks x data_block_size "
                f"({verity.data_blocks} x {verity.data_block_size})"
            )
        names = [self.kernel.file.path, self.initrd.path, self.usr.path, verity.hash_file.path]
        if len(set(names)) != len(names):
            raise ManifestMalformed(f"release file names must be distinct: {names}")

    @property
    def files(self) -> tuple[FileDigest, ...]:
        """The files checked by size and SHA-256 (the /usr image is checked by its tree)."""
        return (self.kernel.file, self.initrd, self.usr.verity.hash_file)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "version": self.version,
            "security_version": self.security_version,
            "created": format_time(self.created),
            "cmdline": self.cmdline,
            "kernel": self.kernel.to_json(),
            "initrd": self.initrd.to_json(),
            "usr": self.usr.to_json(),
        }

    def canonical_bytes(self) -> bytes:
        return canonical_json(self.to_json())

    @classmethod
    def from_json(cls, value: Any) -> Manifest:
        fields = _object(
            value,
            "manifest",
            {"schema_version", "name", "version", "security_version", "created", "cmdline",
             "kernel", "initrd", "usr"},
        )  # fmt: skip
        schema = fields["schema_version"]
        if schema != SCHEMA_VERSION or isinstance(schema, bool):
            raise ManifestMalformed(f"unsupported manifest schema_version {schema!r}")
        created_text = _string(fields["created"], "created")
        try:
            created = dt.datetime.strptime(created_text, _TIME_FORMAT).replace(tzinfo=dt.UTC)
        except ValueError:
            raise ManifestMalformed(
                f"created '{created_text}' is not a UTC time like 2026-01-31T12:00:00Z"
            ) from None
        return cls(
            name=_string(fields["name"], "name"),
            version=_string(fields["version"], "version"),
            security_version=_integer(fields["security_version"], "security_version"),
            created=created,
            cmdline=_string(fields["cmdline"], "cmdline"),
            kernel=KernelFile.from_json(fields["kernel"], "kernel"),
            initrd=FileDigest.from_json(fields["initrd"], "initrd"),
            usr=UsrImage.from_json(fields["usr"], "usr"),
        )

    @classmethod
    def from_bytes(cls, raw: bytes, *, require_canonical: bool = False) -> Manifest:
        document = loads_strict(raw, "manifest", max_size=MAX_MANIFEST, error=ManifestMalformed)
        manifest = cls.from_json(document)
        if require_canonical and manifest.canonical_bytes() != raw:
            raise ManifestMalformed("signed manifest is not in canonical form")
        return manifest


def manifest_digest(manifest: Manifest) -> bytes:
    """SHA-256 of the canonical manifest: the value the boot chain measures."""
    return hashlib.sha256(manifest.canonical_bytes()).digest()


def usrhash_parameter(cmdline: str) -> UsrHash | None:
    """The one ``usrhash=`` of ``cmdline`` as the kernel and systemd read it, None without
    one; ``CmdlineRefused`` when the command line reads two ways, gives ``usrhash=`` twice
    (in any spelling, ``rd.usrhash=`` included) or carries a parameter that could mount
    another /usr (``check_usr_binding``)."""
    return check_usr_binding(parse_cmdline(cmdline))


def usrhash_values(cmdline: str) -> list[str]:
    """The value of ``cmdline``'s one ``usrhash=``, or nothing (``usrhash_parameter``)."""
    usrhash = usrhash_parameter(cmdline)
    return [] if usrhash is None else [usrhash.value]


def bind_usrhash(cmdline: str, root_hash: bytes) -> str:
    """``cmdline`` with ``usrhash=<root hash>`` appended, unless it already carries that value;
    ``CmdlineRefused`` when it carries another value or cannot carry the binding
    (``usrhash_parameter``)."""
    present = usrhash_parameter(cmdline)
    wanted = root_hash.hex()
    if present is None:
        return f"{cmdline.strip()} {USRHASH_PARAMETER}={wanted}".strip()
    if present.value == wanted:
        return cmdline.strip()
    raise CmdlineRefused(
        f"kernel command line carries {present.text}, but the /usr image's root hash is {wanted}"
    )


def sign_manifest(manifest: Manifest, keys: Iterable[SigningKey]) -> dsse.Envelope:
    return dsse.sign(manifest.canonical_bytes(), PAYLOAD_TYPE, keys)


def open_signed_manifest(
    envelope: dsse.Envelope,
    trusted: Iterable[VerifyingKey],
    *,
    threshold: int = 1,
    min_security_version: int | None = None,
) -> tuple[Manifest, dsse.VerifiedPayload]:
    """The manifest inside ``envelope``, after its signatures, its payload type, its form and
    (when given) its security version have been checked. A signed manifest whose command
    line is refused (``CmdlineRefused``) is a ``ReleaseInvalid``."""
    verified = dsse.verify(envelope, PAYLOAD_TYPE, trusted, threshold)
    try:
        manifest = Manifest.from_bytes(verified.payload, require_canonical=True)
    except CmdlineRefused as refused:
        # Validly signed, so a release that is refused rather than input that is unreadable.
        raise ReleaseInvalid(f"signed release refused: {refused}") from None
    if min_security_version is not None and manifest.security_version < min_security_version:
        raise ReleaseInvalid(
            f"release {manifest.name} {manifest.version} has security version "
            f"{manifest.security_version}, below the minimum {min_security_version} "
            "(rollback to an older release refused)"
        )
    return manifest, verified


# The strict readers (stockade.strict_json), raising this module's error; a signed manifest
# has one spelling per value, so hex is lowercase.
_object = partial(read_object, error=ManifestMalformed)
_string = partial(read_string, error=ManifestMalformed, empty=True)
_integer = partial(read_integer, error=ManifestMalformed)
_hex = partial(read_hex, error=ManifestMalformed)
_digest = partial(read_hex, error=ManifestMalformed, length=32)


def _file_name(value: Any, where: str) -> str:
    text = _string(value, where)
    if not _FILE_NAME.fullmatch(text) or text in {".", ".."}:
        raise ManifestMalformed(f"{where} '{text}' is not a plain file name")
    return text
