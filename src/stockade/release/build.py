"""Release directories on disk: build one from its inputs, and re-check one against a
signed manifest. The file I/O around the pure ``manifest`` module."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from stockade.errors import InputError
from stockade.release.authenticode import authenticode_digest
from stockade.release.errors import (
    NotPeImage,
    ReleaseError,
    ReleaseInvalid,
    VerityFormatError,
    VerityMismatch,
)
from stockade.release.manifest import (
    FileDigest,
    KernelFile,
    Manifest,
    UsrImage,
    VerityInfo,
    bind_usrhash,
    usrhash_parameter,
)
from stockade.release.verity import (
    DEFAULT_BLOCK_SIZE,
    Progress,
    VeritySuperblock,
    format_hash_device,
    verify_hash_device,
)

KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd.img"
USR_NAME = "usr.img"
USR_HASH_NAME = "usr.verity"
MANIFEST_NAME = "manifest.json"
ENVELOPE_NAME = "manifest.dsse.json"

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ReleaseInputs:
    name: str
    version: str
    security_version: int
    kernel: Path
    initrd: Path
    cmdline: str
    usr_image: Path


def _unreadable(what: str, path: Path, error: OSError) -> InputError:
    return InputError(f"cannot read {what} '{path}': {error.strerror or error}")


def digest_file(path: Path, name: str | None = None) -> FileDigest:
    """Size and SHA-256 of ``path``, streamed; recorded under ``name`` (default: its own)."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as source:
            while chunk := source.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except OSError as error:
        raise _unreadable("file", path, error) from None
    return FileDigest(name or path.name, size, digest.digest())


def _copy_padded(source: Path, target: Path, block_size: int) -> int:
    """Copy ``source`` to ``target`` with zeros appended up to a whole block; the new size."""
    try:
        shutil.copyfile(source, target)
    except OSError as error:
        raise _unreadable("/usr image", source, error) from None
    size = target.stat().st_size
    padded = size + (-size % block_size)
    if padded != size:
        os.truncate(target, padded)
    return padded


def build_release(
    inputs: ReleaseInputs,
    directory: Path,
    created: dt.datetime,
    *,
    salt: bytes | None = None,
    uuid: UUID | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Write a release into ``directory`` (new or empty): the kernel, the initrd, the /usr
    image zero-padded to whole 4096-byte blocks, its dm-verity hash file and
    ``manifest.json`` in canonical form. The command line gains ``usrhash=<root hash>``;
    one that reads two ways or could mount another /usr is refused (``CmdlineRefused``)
    before anything is written."""
    usrhash_parameter(inputs.cmdline)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ReleaseError(f"release directory '{directory}' exists and is not empty")
    try:
        kernel_bytes = inputs.kernel.read_bytes()
    except OSError as error:
        raise _unreadable("kernel", inputs.kernel, error) from None
    try:
        authenticode: bytes | None = authenticode_digest(kernel_bytes)
    except NotPeImage:
        authenticode = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / KERNEL_NAME).write_bytes(kernel_bytes)
        try:
            shutil.copyfile(inputs.initrd, directory / INITRD_NAME)
        except OSError as error:
            raise _unreadable("initrd", inputs.initrd, error) from None
        usr_path = directory / USR_NAME
        usr_size = _copy_padded(inputs.usr_image, usr_path, DEFAULT_BLOCK_SIZE)
        if usr_size == 0:
            raise VerityFormatError(f"/usr image '{inputs.usr_image}' is empty")
        tree = format_hash_device(
            usr_path, directory / USR_HASH_NAME, salt=salt, uuid=uuid, progress=progress
        )
    except OSError as error:
        raise ReleaseError(f"cannot write release into '{directory}': {error}") from None
    kernel = KernelFile(
        FileDigest(KERNEL_NAME, len(kernel_bytes), hashlib.sha256(kernel_bytes).digest()),
        authenticode,
    )
    verity = VerityInfo(
        root_hash=tree.root_hash,
        salt=tree.salt,
        hash_algorithm=tree.hash_algorithm,
        data_block_size=tree.data_block_size,
        hash_block_size=tree.hash_block_size,
        data_blocks=tree.data_blocks,
        uuid=tree.uuid,
        hash_file=digest_file(directory / USR_HASH_NAME),
    )
    manifest = Manifest(
        name=inputs.name,
        version=inputs.version,
        security_version=inputs.security_version,
        created=created,
        cmdline=bind_usrhash(inputs.cmdline, tree.root_hash),
        kernel=kernel,
        initrd=digest_file(directory / INITRD_NAME),
        usr=UsrImage(USR_NAME, usr_size, verity),
    )
    (directory / MANIFEST_NAME).write_bytes(manifest.canonical_bytes())
    return manifest


def _check_superblock(manifest: Manifest, hash_path: Path) -> None:
    try:
        with hash_path.open("rb") as source:
            superblock = VeritySuperblock.unpack(source.read(512))
    except OSError as error:
        raise _unreadable("hash file", hash_path, error) from None
    verity = manifest.usr.verity
    expected = {
        "salt": verity.salt,
        "uuid": verity.uuid,
        "hash_algorithm": verity.hash_algorithm,
        "data_block_size": verity.data_block_size,
        "hash_block_size": verity.hash_block_size,
        "data_blocks": verity.data_blocks,
    }
    for field, value in expected.items():
        if getattr(superblock, field) != value:
            raise ReleaseInvalid(
                f"{hash_path.name}: superblock {field} differs from the signed manifest"
            )


def verify_artifacts(manifest: Manifest, directory: Path, progress: Progress | None = None) -> None:
    """Re-hash every file of ``manifest`` in ``directory`` and re-verify the /usr image's
    dm-verity tree against the signed root hash. ``ReleaseInvalid`` or ``VerityMismatch``
    (naming the file, and the block for /usr) when anything differs."""
    for expected in manifest.files:
        path = directory / expected.path
        actual = digest_file(path, expected.path)
        if actual.size != expected.size:
            raise ReleaseInvalid(
                f"{expected.path}: {actual.size} bytes, the signed manifest says {expected.size}"
            )
        if actual.sha256 != expected.sha256:
            raise ReleaseInvalid(
                f"{expected.path}: sha256 {actual.sha256.hex()} differs from the signed "
                f"{expected.sha256.hex()}"
            )
    usr = manifest.usr
    usr_path = directory / usr.path
    hash_path = directory / usr.verity.hash_file.path
    try:
        size = usr_path.stat().st_size
    except OSError as error:
        raise _unreadable("/usr image", usr_path, error) from None
    if size != usr.size:
        raise ReleaseInvalid(f"{usr.path}: {size} bytes, the signed manifest says {usr.size}")
    _check_superblock(manifest, hash_path)
    try:
        verify_hash_device(usr_path, hash_path, usr.verity.root_hash, progress)
    except VerityMismatch as mismatch:
        raise VerityMismatch(
            f"{usr.path}: {mismatch.detail}",
            data_block=mismatch.data_block,
            hash_block=mismatch.hash_block,
        ) from None
