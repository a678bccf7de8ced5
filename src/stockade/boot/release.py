"""The OS release a development node boots, and the reference inputs a verifier derives
from a signed release.

Two views of one release directory (``stockade release build``):

- ``load_release`` + ``measure_release``: what a node boots, measured from the files
  as they are (a replaced kernel, initrd or /usr image shows up). The /usr
  measurement is the dm-verity root hash recomputed from the /usr image with the
  parameters (salt, block sizes) of the release's hash file: the root hash of what
  would be mounted, not the one the manifest claims.
- ``release_reference``: what the signed manifest says; SHA-256 values come from the
  manifest itself, and digests for other banks (SHA-1, ...) from files whose SHA-256
  matches the manifest, so every value is bound to the signature.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stockade.appraisal.measured_boot import PlatformReference, ReleaseReference
from stockade.boot.errors import BootHalted, BootInputError
from stockade.boot.platform import authenticode_digests, file_digests, read_image
from stockade.boot.secure_boot import authorize_image
from stockade.errors import StockadeError
from stockade.evidence.algorithms import Alg
from stockade.evidence.efi_signatures import SignatureEntry
from stockade.release.build import MANIFEST_NAME
from stockade.release.errors import ReleaseInvalid
from stockade.release.manifest import Manifest, manifest_digest
from stockade.release.verity import VeritySuperblock, build_hash_device


@dataclass(frozen=True)
class ReleaseImages:
    """The files of one release a node boots; any of them may have been replaced."""

    manifest: Manifest
    kernel: Path
    initrd: Path
    usr_image: Path
    usr_hash: Path


def read_manifest(directory: Path) -> Manifest:
    raw = read_image(directory / MANIFEST_NAME, "release manifest")
    try:
        return Manifest.from_bytes(raw)
    except StockadeError as error:
        raise BootInputError(f"{directory / MANIFEST_NAME}: {error}") from None


def load_release(
    directory: Path,
    *,
    kernel: Path | None = None,
    initrd: Path | None = None,
    usr_image: Path | None = None,
) -> ReleaseImages:
    """The release in ``directory``; ``kernel``/``initrd``/``usr_image`` boot another file
    in that file's place (the attack inputs of a development node)."""
    manifest = read_manifest(directory)
    return ReleaseImages(
        manifest=manifest,
        kernel=kernel or directory / manifest.kernel.file.path,
        initrd=initrd or directory / manifest.initrd.path,
        usr_image=usr_image or directory / manifest.usr.path,
        usr_hash=directory / manifest.usr.verity.hash_file.path,
    )


def usr_root_hash(usr_image: Path, usr_hash: Path) -> bytes:
    """The dm-verity root hash of ``usr_image`` under the superblock of ``usr_hash``."""
    superblock = VeritySuperblock.unpack(read_image(usr_hash, "/usr hash file")[:512])
    try:
        with usr_image.open("rb") as data:
            tree, _ = build_hash_device(data, superblock)
    except OSError as error:
        raise BootInputError(
            f"cannot read /usr image '{usr_image}': {error.strerror or error}"
        ) from None
    except StockadeError as error:
        raise BootInputError(f"/usr image '{usr_image}': {error}") from None
    return tree.root_hash


def measure_release(images: ReleaseImages, banks: Sequence[int]) -> ReleaseReference:
    """What the node's bootloader measures: digests of the files it actually loads."""
    manifest = images.manifest
    kernel = read_image(images.kernel, "kernel")
    initrd = read_image(images.initrd, "initrd")
    return ReleaseReference(
        name=manifest.name,
        version=manifest.version,
        manifest_sha256=manifest_digest(manifest),
        cmdline=manifest.cmdline,
        kernel_file_name=manifest.kernel.file.path,
        kernel_file=file_digests(kernel, banks),
        kernel_authenticode=authenticode_digests(kernel, banks, f"kernel '{images.kernel}'"),
        kernel_length=len(kernel),
        initrd_file_name=manifest.initrd.path,
        initrd_file=file_digests(initrd, banks),
        usr_root_hash=usr_root_hash(images.usr_image, images.usr_hash),
    )


def release_reference(
    manifest: Manifest, directory: Path, banks: Sequence[int]
) -> ReleaseReference:
    """Reference inputs for ``manifest`` (already verified by the caller, if signed).

    ``ReleaseInvalid`` when a file in ``directory`` does not have the manifest's SHA-256
    or the kernel has no Authenticode digest in the manifest.
    """
    authenticode = manifest.kernel.authenticode_sha256
    if authenticode is None:
        raise ReleaseInvalid(
            f"release {manifest.name} {manifest.version}: the kernel is not a PE image, so "
            "UEFI cannot load it and PCR 4 has no reference value"
        )
    kernel = read_image(directory / manifest.kernel.file.path, "kernel")
    initrd = read_image(directory / manifest.initrd.path, "initrd")
    for name, data, expected in (
        (manifest.kernel.file.path, kernel, manifest.kernel.file.sha256),
        (manifest.initrd.path, initrd, manifest.initrd.sha256),
    ):
        if hashlib.sha256(data).digest() != expected:
            raise ReleaseInvalid(f"{name}: sha256 differs from the signed manifest")
    other_banks = [alg for alg in banks if alg != Alg.SHA256]
    return ReleaseReference(
        name=manifest.name,
        version=manifest.version,
        manifest_sha256=manifest_digest(manifest),
        cmdline=manifest.cmdline,
        kernel_file_name=manifest.kernel.file.path,
        kernel_file=file_digests(kernel, other_banks) | {Alg.SHA256: manifest.kernel.file.sha256},
        kernel_authenticode=authenticode_digests(kernel, other_banks, "kernel")
        | {Alg.SHA256: authenticode},
        kernel_length=manifest.kernel.file.size,
        initrd_file_name=manifest.initrd.path,
        initrd_file=file_digests(initrd, other_banks) | {Alg.SHA256: manifest.initrd.sha256},
        usr_root_hash=manifest.usr.verity.root_hash,
    )


def kernel_authority(
    platform: PlatformReference, manifest: Manifest, directory: Path
) -> SignatureEntry | None:
    """The db entry that authorises the release's kernel on ``platform`` (None when the
    platform boots without Secure Boot); ``ReleaseInvalid`` when db does not allow it,
    since such a release has no reference values on that platform."""
    if not platform.secure_boot:
        return None
    kernel = directory / manifest.kernel.file.path
    try:
        return authorize_image("kernel", kernel.name, kernel, platform.db, platform.dbx)
    except BootHalted as refused:
        raise ReleaseInvalid(
            f"release {manifest.name} {manifest.version} would not boot on this platform: "
            f"{refused.reason}"
        ) from None
