"""Reference inputs from a signed release manifest alone, without its files: the pure
counterpart of ``stockade.boot.release.release_reference`` and ``kernel_authority``,
for a verifier that holds policies, not release directories.

Every value comes from the verified manifest: the kernel and initrd SHA-256, the
kernel's Authenticode SHA-256 (what UEFI measures into PCR 4), the command line,
the /usr dm-verity root hash and the manifest digest. The manifest carries SHA-256
digests only, so only the sha256 bank can be predicted from it.

Which db entry authorises the kernel under Secure Boot (measured into PCR 7 as
EV_EFI_VARIABLE_AUTHORITY) is decided as the firmware decides (UEFI 2.10, 32.5.3.3;
the order of ``stockade.boot.secure_boot.authorize_image``), from what can be known
without the kernel's signature:

1. the kernel's Authenticode SHA-256 is an EFI_CERT_SHA256 entry of dbx: it does not
   boot (``ReleaseNotBootable``);
2. it is an EFI_CERT_SHA256 entry of db: that entry;
3. otherwise the X.509 db entry that authorises the platform's bootloader (its last
   stage, the one that loads the kernel) in the platform reference: the organization
   signs its boot chain and its kernels with one Secure Boot key (``stockade keys
   generate`` makes one certificate; ``stockade boot init`` signs shim and GRUB with
   it; releases carry kernels signed with it). That certificate must not be in dbx.

Rule 3 is an assumption the manifest cannot prove (it does not name the kernel's
signer). It fails closed: a kernel signed by another db certificate puts another
authority into PCR 7, so a node booting it matches no reference value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from stockade.appraisal.measured_boot import (
    MeasurementInputError,
    PlatformReference,
    ReleaseReference,
)
from stockade.evidence.algorithms import HASHES, Alg
from stockade.evidence.efi_signatures import SignatureEntry
from stockade.release.manifest import Manifest, manifest_digest


class UnsupportedReferenceBank(MeasurementInputError):
    """A bank a manifest carries no digests for (it carries sha256 only)."""


class ReleaseNotBootable(MeasurementInputError):
    """A release whose kernel the platform would not run (or could not load as EFI)."""


def _describe(manifest: Manifest) -> str:
    return f"release {manifest.name} {manifest.version}"


def release_reference_from_manifest(
    manifest: Manifest, banks: Sequence[int] = (Alg.SHA256,)
) -> ReleaseReference:
    """The measured parts of ``manifest`` (verified by the caller) for the sha256 bank."""
    other = [alg for alg in banks if alg != Alg.SHA256]
    if other or not banks:
        names = ", ".join(HASHES[alg].name if alg in HASHES else f"0x{alg:04x}" for alg in other)
        raise UnsupportedReferenceBank(
            f"{_describe(manifest)}: a manifest carries sha256 digests only; no reference "
            f"values for {names or 'an empty bank list'}"
        )
    authenticode = manifest.kernel.authenticode_sha256
    if authenticode is None:
        raise ReleaseNotBootable(
            f"{_describe(manifest)}: the kernel is not a PE image, so UEFI cannot load it "
            "and PCR 4 has no reference value"
        )
    return ReleaseReference(
        name=manifest.name,
        version=manifest.version,
        manifest_sha256=manifest_digest(manifest),
        cmdline=manifest.cmdline,
        kernel_file_name=manifest.kernel.file.path,
        kernel_file={Alg.SHA256: manifest.kernel.file.sha256},
        kernel_authenticode={Alg.SHA256: authenticode},
        kernel_length=manifest.kernel.file.size,
        initrd_file_name=manifest.initrd.path,
        initrd_file={Alg.SHA256: manifest.initrd.sha256},
        usr_root_hash=manifest.usr.verity.root_hash,
    )


def kernel_authority_from_manifest(
    platform: PlatformReference, manifest: Manifest
) -> SignatureEntry | None:
    """The db entry that authorises the release's kernel on ``platform`` (None without
    Secure Boot), by the rule in this module's docstring; ``ReleaseNotBootable`` when
    the platform would refuse the kernel or no entry can be named."""
    if not platform.secure_boot:
        return None
    digest = manifest.kernel.authenticode_sha256
    if digest is None:
        raise ReleaseNotBootable(f"{_describe(manifest)}: the kernel is not a PE image")
    for signature_list in platform.dbx:
        if signature_list.is_sha256 and any(e.data == digest for e in signature_list.entries):
            raise ReleaseNotBootable(
                f"{_describe(manifest)}: the kernel's Authenticode SHA-256 {digest.hex()} "
                "is revoked in the platform's dbx"
            )
    for signature_list in platform.db:
        if signature_list.is_sha256:
            for entry in signature_list.entries:
                if entry.data == digest:
                    return entry
    bootloader = platform.stages[-1]
    authority = bootloader.authority
    in_db = authority is not None and any(
        signature_list.is_x509 and authority in signature_list.entries
        for signature_list in platform.db
    )
    if authority is None or not in_db:
        raise ReleaseNotBootable(
            f"{_describe(manifest)}: the platform reference names no X.509 db entry "
            f"authorising its bootloader ({bootloader.name}), so none for the kernel either"
        )
    revoked = any(
        signature_list.is_x509 and any(e.data == authority.data for e in signature_list.entries)
        for signature_list in platform.dbx
    )
    if revoked:
        fingerprint = hashlib.sha256(authority.data).hexdigest()
        raise ReleaseNotBootable(
            f"{_describe(manifest)}: the Secure Boot certificate {fingerprint} is revoked in dbx"
        )
    return authority
