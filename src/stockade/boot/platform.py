"""A development platform: the virtual machine a development node boots on.

Its parts are what real hardware has: a firmware image in flash, NVRAM with the
Secure Boot variables (PK, KEK, db, dbx) and SecureBoot, a disk whose ESP holds the
boot applications (a real shim and a real GRUB from Debian, signed for this
platform with ``sbsign``). A platform directory holds them as files::

    node.json            the NVRAM and hardware: Secure Boot state, PK/KEK/db/dbx,
                         firmware version, disk GUID, which stages boot from where
    firmware.fv          the firmware volume measured into PCR 0
    esp/EFI/debian/      shimx64.efi and grubx64.efi, signed
    platform.json        the platform's reference description (PlatformReference),
                         written once when the platform is made: what its owner
                         publishes for verifiers

Booting measures the files as they are at boot time, so a changed firmware.fv or
stage image shows in PCR 0 or 4, while platform.json keeps the values they had.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from stockade.appraisal.measured_boot import (
    FirmwareBlob,
    PlatformReference,
    StageImage,
    esp_file_device_path,
    sha256_signature_list,
    x509_signature_list,
)
from stockade.appraisal.reference import (
    ReferenceMalformed,
    platform_to_json,
    signature_lists_from_json,
    signature_lists_to_json,
)
from stockade.boot.disk import VirtualDisk, boot_variables
from stockade.boot.errors import BootHalted, BootInputError
from stockade.boot.firmware import (
    DEFAULT_CRTM_VERSION,
    FIRMWARE_BASE,
    FIRMWARE_DESCRIPTION,
    virtual_firmware_volume,
)
from stockade.boot.secure_boot import authorize_image, sign_image
from stockade.evidence.algorithms import HASHES, Alg
from stockade.evidence.efi_signatures import SignatureList
from stockade.release.authenticode import authenticode_digest
from stockade.release.errors import NotPeImage

NODE_FILE = "node.json"
REFERENCE_FILE = "platform.json"
FIRMWARE_FILE = "firmware.fv"
NODE_SCHEMA = "stockade.development-platform.v1"

DEBIAN_SHIM = Path("/usr/lib/shim/shimx64.efi")  # shim-unsigned
DEBIAN_GRUB = Path("/usr/lib/grub/x86_64-efi/monolithic/grubx64.efi")  # grub-efi-amd64-bin
SHIM_ESP_PATH = "/EFI/debian/shimx64.efi"
GRUB_ESP_PATH = "/EFI/debian/grubx64.efi"
BOOT_OPTION_DESCRIPTION = "stockade"

# SignatureOwner of the entries Stockade enrolls (any GUID naming the owner will do).
STOCKADE_OWNER_GUID = uuid.UUID("0e1e4a2c-5d2f-4c4b-9d55-570c4ade0001")
# Banks a reference carries digests for: every bank swtpm can allocate.
REFERENCE_BANKS: tuple[int, ...] = (Alg.SHA1, Alg.SHA256, Alg.SHA384, Alg.SHA512)


@dataclass(frozen=True)
class BootStage:
    """A boot application on the ESP: the chain's name for it, its ESP path, its file."""

    name: str
    esp_path: str
    image: Path


def file_digests(data: bytes, banks: Sequence[int]) -> dict[int, bytes]:
    return {alg: HASHES[alg].digest(data) for alg in banks}


def authenticode_digests(image: bytes, banks: Sequence[int], what: str) -> dict[int, bytes]:
    try:
        return {alg: authenticode_digest(image, HASHES[alg].name) for alg in banks}
    except NotPeImage as error:
        raise BootInputError(f"{what}: {error}") from None


def read_image(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise BootInputError(f"cannot read {what} '{path}': {error.strerror or error}") from None


@dataclass(frozen=True)
class DevelopmentPlatform:
    firmware_image: Path
    stages: tuple[BootStage, ...]
    pk: tuple[SignatureList, ...]
    kek: tuple[SignatureList, ...]
    db: tuple[SignatureList, ...]
    dbx: tuple[SignatureList, ...] = ()
    secure_boot: bool = True
    crtm_version: str = DEFAULT_CRTM_VERSION
    disk: VirtualDisk = field(default_factory=VirtualDisk)
    startup_locality: int = 3

    def __post_init__(self) -> None:
        names = [stage.name for stage in self.stages]
        if not names or len(set(names)) != len(names) or "kernel" in names:
            raise BootInputError(f"boot stages need distinct names other than 'kernel': {names}")
        if self.secure_boot and not self.pk:
            raise BootInputError(
                "Secure Boot needs a PK; without one the platform is in Setup Mode"
            )

    def with_secure_boot(self, enabled: bool) -> DevelopmentPlatform:
        """The same platform with Secure Boot switched on or off in firmware setup."""
        return replace(self, secure_boot=enabled)

    def with_dbx(self, dbx: Sequence[SignatureList]) -> DevelopmentPlatform:
        return replace(self, dbx=tuple(dbx))

    def measure(self, banks: Sequence[int], *, authorities: bool = False) -> PlatformReference:
        """What this platform's firmware measures, from the bytes as they are now.

        With ``authorities`` each stage also names the db entry that authorises it
        (None when none does): what a reference needs, and what booting decides anew.
        """
        firmware = read_image(self.firmware_image, "firmware image")
        stages = []
        for stage in self.stages:
            image = read_image(stage.image, f"{stage.name} image")
            authority = None
            if authorities:
                try:
                    authority = authorize_image(
                        stage.name, stage.esp_path, stage.image, self.db, self.dbx
                    )
                except BootHalted:
                    authority = None
            stages.append(
                StageImage(
                    name=stage.name,
                    esp_path=stage.esp_path,
                    device_path=esp_file_device_path(self.disk.esp_device_path(), stage.esp_path),
                    length=len(image),
                    authenticode=authenticode_digests(image, banks, f"{stage.name} image"),
                    authority=authority,
                )
            )
        return PlatformReference(
            crtm_version=self.crtm_version,
            firmware_blobs=(
                FirmwareBlob(
                    FIRMWARE_DESCRIPTION,
                    FIRMWARE_BASE,
                    len(firmware),
                    file_digests(firmware, banks),
                ),
            ),
            secure_boot=self.secure_boot,
            pk=self.pk,
            kek=self.kek,
            db=self.db,
            dbx=self.dbx,
            boot_variables=boot_variables(
                self.disk, self.stages[0].esp_path, BOOT_OPTION_DESCRIPTION
            ),
            gpt=self.disk.gpt_event_data(),
            esp_device_path=self.disk.esp_device_path(),
            stages=tuple(stages),
            startup_locality=self.startup_locality,
        )

    def reference(self, banks: Sequence[int] = REFERENCE_BANKS) -> PlatformReference:
        """The platform's reference description, every stage with its authority."""
        return self.measure(banks, authorities=True)

    def to_json(self, directory: Path) -> dict[str, Any]:
        def relative(path: Path) -> str:
            try:
                return str(path.relative_to(directory))
            except ValueError:
                return str(path)

        return {
            "schema": NODE_SCHEMA,
            "crtm_version": self.crtm_version,
            "startup_locality": self.startup_locality,
            "secure_boot": self.secure_boot,
            "firmware_image": relative(self.firmware_image),
            "disk_guid": str(self.disk.disk_guid),
            "pk": signature_lists_to_json(self.pk),
            "kek": signature_lists_to_json(self.kek),
            "db": signature_lists_to_json(self.db),
            "dbx": signature_lists_to_json(self.dbx),
            "stages": [
                {"name": s.name, "esp_path": s.esp_path, "image": relative(s.image)}
                for s in self.stages
            ],
        }

    def save(self, directory: Path) -> None:
        _write(directory / NODE_FILE, self.to_json(directory))

    @classmethod
    def load(cls, directory: Path) -> DevelopmentPlatform:
        """The platform in ``directory`` (its node.json)."""
        path = directory / NODE_FILE
        try:
            document = json.loads(path.read_bytes())
        except OSError as error:
            raise BootInputError(
                f"cannot read platform '{path}': {error.strerror or error}"
            ) from None
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BootInputError(f"platform '{path}' is not JSON: {error}") from None
        try:
            return _from_json(document, directory)
        except (KeyError, TypeError, ValueError, ReferenceMalformed) as error:
            raise BootInputError(f"platform '{path}' is malformed: {error}") from None


def _from_json(document: Any, directory: Path) -> DevelopmentPlatform:
    if document["schema"] != NODE_SCHEMA:
        raise ValueError(f"schema {document['schema']!r} is not {NODE_SCHEMA}")
    secure_boot = document["secure_boot"]
    if not isinstance(secure_boot, bool):
        raise ValueError("secure_boot is not true or false")
    return DevelopmentPlatform(
        firmware_image=directory / str(document["firmware_image"]),
        stages=tuple(
            BootStage(str(s["name"]), str(s["esp_path"]), directory / str(s["image"]))
            for s in document["stages"]
        ),
        pk=signature_lists_from_json(document["pk"], "pk"),
        kek=signature_lists_from_json(document["kek"], "kek"),
        db=signature_lists_from_json(document["db"], "db"),
        dbx=signature_lists_from_json(document["dbx"], "dbx"),
        secure_boot=secure_boot,
        crtm_version=str(document["crtm_version"]),
        disk=VirtualDisk(uuid.UUID(str(document["disk_guid"]))),
        startup_locality=int(document["startup_locality"]),
    )


def _write(path: Path, document: Any) -> None:
    try:
        path.write_text(json.dumps(document, indent=2) + "\n")
    except OSError as error:
        raise BootInputError(f"cannot write '{path}': {error.strerror or error}") from None


def certificate_der(path: Path) -> bytes:
    """A PEM or DER X.509 certificate file, as DER."""
    data = read_image(path, "certificate")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data).public_bytes(serialization.Encoding.DER)
        return x509.load_der_x509_certificate(data).public_bytes(serialization.Encoding.DER)
    except ValueError:
        raise BootInputError(f"'{path}' is not an X.509 certificate") from None


def revocation_list(images: Sequence[Path]) -> tuple[SignatureList, ...]:
    """A dbx revoking each image by its Authenticode SHA-256 (EFI_CERT_SHA256 entries)."""
    if not images:
        return ()
    digests = [
        authenticode_digests(read_image(p, "image"), [Alg.SHA256], str(p))[Alg.SHA256]
        for p in images
    ]
    return (sha256_signature_list(STOCKADE_OWNER_GUID, digests),)


def create_development_platform(
    directory: Path,
    secure_boot_key: Path,
    secure_boot_certificate: Path,
    *,
    secure_boot: bool = True,
    crtm_version: str = DEFAULT_CRTM_VERSION,
    dbx_images: Sequence[Path] = (),
    shim: Path = DEBIAN_SHIM,
    bootloader: Path = DEBIAN_GRUB,
    startup_locality: int = 3,
) -> DevelopmentPlatform:
    """Make a platform in ``directory`` (new or empty) owned by the organization whose Secure
    Boot certificate becomes PK, KEK and db: write its firmware volume, sign the Debian
    shim and GRUB onto its ESP, save node.json and its reference, platform.json."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise BootInputError(f"platform directory '{directory}' exists and is not empty")
    for path, package in ((shim, "shim-unsigned"), (bootloader, "grub-efi-amd64-bin")):
        if not path.is_file():
            raise BootInputError(f"'{path}' not found; install the Debian package {package}")
    owner = x509_signature_list(STOCKADE_OWNER_GUID, certificate_der(secure_boot_certificate))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / FIRMWARE_FILE).write_bytes(virtual_firmware_volume(crtm_version))
    except OSError as error:
        raise BootInputError(f"cannot write platform '{directory}': {error}") from None
    stages = []
    for name, source, esp_path in (
        ("shim", shim, SHIM_ESP_PATH),
        ("grub", bootloader, GRUB_ESP_PATH),
    ):
        target = directory / "esp" / esp_path.lstrip("/")
        sign_image(source, target, secure_boot_key, secure_boot_certificate)
        stages.append(BootStage(name, esp_path, target))
    platform = DevelopmentPlatform(
        firmware_image=directory / FIRMWARE_FILE,
        stages=tuple(stages),
        pk=(owner,),
        kek=(owner,),
        db=(owner,),
        dbx=revocation_list(dbx_images),
        secure_boot=secure_boot,
        crtm_version=crtm_version,
        startup_locality=startup_locality,
    )
    platform.save(directory)
    _write(directory / REFERENCE_FILE, platform_to_json(platform.reference()))
    return platform
