"""What a development node's boot chain measures, where, and in which order: one pure
definition shared by the virtual firmware (``stockade.boot``), which extends a TPM
with these measurements, and the reference-value predictor
(``stockade.appraisal.reference``), which replays them without a TPM.

The order and event types follow the TCG PC Client Platform Firmware Profile
(PFP, version 1.05) as EDK2/OVMF firmware, shim and GRUB 2 implement it:

- PCR 0 (PFP 3.3.4.1): EV_S_CRTM_VERSION (UTF-16 version string), then one
  EV_EFI_PLATFORM_FIRMWARE_BLOB2 per firmware volume (digest: the volume's bytes).
- PCR 7 (PFP 3.3.4.8): EV_EFI_VARIABLE_DRIVER_CONFIG for SecureBoot, PK, KEK, db,
  dbx (digest: the whole UEFI_VARIABLE_DATA), then EV_SEPARATOR.
- PCR 1 (PFP 3.3.4.2): BootOrder and each Boot#### as EV_EFI_VARIABLE_BOOT (digest:
  VariableData only, as EDK2 does for this event type; BOOT2 would hash the whole
  structure).
- PCR 4 (PFP 3.3.4.5): EV_EFI_ACTION "Calling EFI Application from Boot Option",
  then the separators of PCRs 0-6, then the GPT into PCR 5 as EV_EFI_GPT_EVENT
  (PFP 3.3.4.6).
- Each boot application (shim, the bootloader, the kernel): with Secure Boot on,
  the db entry that authorised it as EV_EFI_VARIABLE_AUTHORITY in PCR 7, once per
  entry (PFP 3.3.4.8), then EV_EFI_BOOT_SERVICES_APPLICATION in PCR 4 whose
  digests are the image's Authenticode digests (PFP 3.3.4.5). A refused
  image is never measured: the ``authorize`` callback raises before its events.
- The bootloader measures as GRUB 2 does: every file it reads into PCR 9
  (EV_IPL, data = the path, digest = the file's bytes) and every command and the
  kernel command line into PCR 8 (EV_IPL, data = "grub_cmd: ..." or
  "kernel_cmdline: <kernel path> <cmdline>" NUL-terminated, digest = the string
  after the prefix, without the NUL).
- The OS release, in PCR 12 (``RELEASE_PCR``): EV_IPL "stockade-release: <name>
  <version> sha256:<manifest digest>" and EV_IPL "stockade-usr-verity: <root hash>",
  each with the digest of its own data. PCR 12 is not resettable (16 and 23 are),
  no firmware, shim (PCR 14: MokList) or GRUB measurement uses it, and systemd
  uses it only on UKI boots with command-line overrides. The bootloader measures
  both before ExitBootServices, so they are in the one firmware event log a
  development node has.
- PCR 5: EV_EFI_ACTION "Exit Boot Services Invocation" and "... Returned with
  Success" when the kernel's EFI stub leaves boot services.

A StartupLocality EV_NO_ACTION event (PFP 10.4.5.3) comes first when the TPM was
started from locality 3; PCR 0 then starts at 0...03 in every bank.

Not modelled: shim's own measurements (MokList, MokListX, MokListTrusted into PCR
14, SbatLevel into PCR 7) and its MOK database (shim verifies against db only);
GRUB reads one generated grub.cfg and runs only ``linux`` and ``initrd``.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from stockade.errors import InputError
from stockade.evidence.algorithms import HASHES
from stockade.evidence.efi_signatures import (
    EFI_CERT_SHA256_GUID,
    EFI_CERT_X509_GUID,
    SignatureEntry,
    SignatureList,
)
from stockade.evidence.event_data import (
    FirmwareBlobData,
    ImageLoadData,
    SeparatorData,
    StartupLocalityData,
    TextData,
    UefiVariableData,
)
from stockade.evidence.eventlog import (
    SPEC_ID_SIGNATURE_AGILE,
    AlgorithmSize,
    Event,
    EventLog,
    EventType,
    SpecIdEvent,
)

EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE_GUID = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")

RELEASE_PCR = 12
BOOT_MANAGER_CODE_PCR = 4
SECURE_BOOT_PCR = 7
GRUB_STRING_PCR = 8
GRUB_BINARY_PCR = 9

CALLING_EFI_APPLICATION = "Calling EFI Application from Boot Option"
EXIT_BOOT_SERVICES_INVOCATION = "Exit Boot Services Invocation"
EXIT_BOOT_SERVICES_SUCCESS = "Exit Boot Services Returned with Success"
GRUB_COMMAND_PREFIX = "grub_cmd: "
GRUB_KERNEL_CMDLINE_PREFIX = "kernel_cmdline: "
RELEASE_EVENT_PREFIX = "stockade-release: "
USR_VERITY_EVENT_PREFIX = "stockade-usr-verity: "

ESP_RELEASE_DIRECTORY = "/EFI/stockade"
GRUB_ESP_DEVICE = "(hd0,gpt1)"
GRUB_CONFIG_PATH = "/EFI/debian/grub.cfg"

# Where each boot application appears in memory (UEFI_IMAGE_LOAD_EVENT): only data,
# never part of a digest, but fixed so that two boots write identical logs.
_IMAGE_BASE = 0x7E000000
_IMAGE_STRIDE = 0x01000000

Digests = Mapping[int, bytes]
"""TPM_ALG_ID -> digest, one per bank."""


class MeasurementInputError(InputError):
    """A boot description that cannot be measured: a digest missing for a bank, a stage
    without an authority under Secure Boot, a malformed value."""


@dataclass(frozen=True)
class Measurement:
    """One event as the firmware logs it and extends it: PCR, type, data, digest per bank."""

    pcr: int
    event_type: EventType
    data: bytes
    digests: tuple[tuple[int, bytes], ...]

    @property
    def extends(self) -> bool:
        """EV_NO_ACTION events are logged but never extended."""
        return self.event_type != EventType.EV_NO_ACTION


@dataclass(frozen=True)
class FirmwareBlob:
    """A firmware volume measured into PCR 0 as UEFI_PLATFORM_FIRMWARE_BLOB2."""

    description: bytes
    base: int
    length: int
    digests: Digests


@dataclass(frozen=True)
class StageImage:
    """A boot application: its name in the chain ("shim", "grub", "kernel"), the path on
    the ESP, the device path the loader logs, its size, its Authenticode digest per bank
    and, in a reference, the db entry expected to authorise it under Secure Boot."""

    name: str
    esp_path: str
    device_path: bytes
    length: int
    authenticode: Digests
    authority: SignatureEntry | None = None


@dataclass(frozen=True)
class PlatformReference:
    """Everything a platform's firmware measures before the OS release: what a platform
    owner publishes so that a verifier can predict PCRs 0-7 without a golden machine."""

    crtm_version: str
    firmware_blobs: tuple[FirmwareBlob, ...]
    secure_boot: bool
    pk: tuple[SignatureList, ...]
    kek: tuple[SignatureList, ...]
    db: tuple[SignatureList, ...]
    dbx: tuple[SignatureList, ...]
    boot_variables: tuple[tuple[str, bytes], ...]  # (name, contents), BootOrder first
    gpt: bytes | None  # UEFI_GPT_DATA
    esp_device_path: bytes  # device path of the EFI system partition, without End node
    stages: tuple[StageImage, ...]  # shim, then the bootloader
    startup_locality: int = 0

    def __post_init__(self) -> None:
        if self.startup_locality not in (0, 3):
            raise MeasurementInputError(
                f"startup locality {self.startup_locality}: a TPM starts from locality 0 or 3"
            )
        if not self.stages:
            raise MeasurementInputError("a platform needs at least one boot application")


@dataclass(frozen=True)
class ReleaseReference:
    """The parts of a signed OS release that the boot chain measures."""

    name: str
    version: str
    manifest_sha256: bytes
    cmdline: str
    kernel_file_name: str
    kernel_file: Digests  # digest of the kernel file's bytes (GRUB, PCR 9)
    kernel_authenticode: Digests  # what UEFI measures into PCR 4
    kernel_length: int
    initrd_file_name: str
    initrd_file: Digests
    usr_root_hash: bytes

    @property
    def kernel_path(self) -> str:
        return f"{ESP_RELEASE_DIRECTORY}/{self.kernel_file_name}"

    @property
    def initrd_path(self) -> str:
        return f"{ESP_RELEASE_DIRECTORY}/{self.initrd_file_name}"


Authorize = Callable[[StageImage], SignatureEntry]
"""Asked before each boot application runs under Secure Boot: return the db entry that
authorises it, or raise to halt the boot (nothing of that image is measured)."""


# -- device paths (UEFI 2.10, 10.3) -------------------------------------------------


def _node(node_type: int, subtype: int, body: bytes) -> bytes:
    return struct.pack("<BBH", node_type, subtype, 4 + len(body)) + body


def pci_root_node(uid: int = 0) -> bytes:
    return _node(0x02, 0x01, struct.pack("<II", 0x0A0341D0, uid))


def pci_node(device: int, function: int) -> bytes:
    return _node(0x01, 0x01, bytes([function, device]))


def sata_node(port: int, multiplier: int = 0xFFFF, lun: int = 0) -> bytes:
    return _node(0x03, 0x12, struct.pack("<HHH", port, multiplier, lun))


def hard_drive_node(number: int, start: int, size: int, partition_guid: uuid.UUID) -> bytes:
    """HD(number,GPT,guid,start,size): MBRType 2 (GPT), SignatureType 2 (GUID)."""
    return _node(
        0x04, 0x01, struct.pack("<IQQ", number, start, size) + partition_guid.bytes_le + b"\x02\x02"
    )


def file_path_node(path: str) -> bytes:
    return _node(0x04, 0x04, (path + "\x00").encode("utf-16-le"))


END_OF_DEVICE_PATH = _node(0x7F, 0xFF, b"")


def esp_file_device_path(esp_device_path: bytes, esp_path: str) -> bytes:
    """The full device path of a file on the ESP, End node included."""
    return esp_device_path + file_path_node(esp_path.replace("/", "\\")) + END_OF_DEVICE_PATH


# -- event construction ------------------------------------------------------------


class _Measurer:
    def __init__(self, banks: Sequence[int]) -> None:
        unknown = [alg for alg in banks if alg not in HASHES]
        if unknown or not banks:
            raise MeasurementInputError(f"cannot measure into banks {list(banks)}")
        self.banks = tuple(banks)

    def of_bytes(
        self, pcr: int, event_type: EventType, data: bytes, measured: bytes
    ) -> Measurement:
        digests = tuple((alg, HASHES[alg].digest(measured)) for alg in self.banks)
        return Measurement(pcr, event_type, data, digests)

    def of_data(self, pcr: int, event_type: EventType, data: bytes) -> Measurement:
        return self.of_bytes(pcr, event_type, data, data)

    def of_digests(
        self, pcr: int, event_type: EventType, data: bytes, digests: Digests, what: str
    ) -> Measurement:
        missing = [HASHES[alg].name for alg in self.banks if alg not in digests]
        if missing:
            raise MeasurementInputError(f"no {', '.join(missing)} digest of {what}")
        for alg in self.banks:
            if len(digests[alg]) != HASHES[alg].digest_size:
                raise MeasurementInputError(
                    f"the {HASHES[alg].name} digest of {what} has {len(digests[alg])} bytes"
                )
        return Measurement(pcr, event_type, data, tuple((alg, digests[alg]) for alg in self.banks))

    def no_action(self, data: bytes) -> Measurement:
        zeros = tuple((alg, bytes(HASHES[alg].digest_size)) for alg in self.banks)
        return Measurement(0, EventType.EV_NO_ACTION, data, zeros)

    def separator(self, pcr: int) -> Measurement:
        return self.of_data(pcr, EventType.EV_SEPARATOR, SeparatorData(0).encode())

    def efi_action(self, pcr: int, text: str) -> Measurement:
        return self.of_data(pcr, EventType.EV_EFI_ACTION, TextData(text).encode())

    def grub_string(self, prefix: str, text: str) -> Measurement:
        data = TextData(prefix + text, nul_terminated=True).encode()
        return self.of_bytes(GRUB_STRING_PCR, EventType.EV_IPL, data, text.encode())

    def grub_file(self, path: str, digests: Digests) -> Measurement:
        data = TextData(path, nul_terminated=True).encode()
        return self.of_digests(GRUB_BINARY_PCR, EventType.EV_IPL, data, digests, path)


def signature_list_bytes(lists: Sequence[SignatureList]) -> bytes:
    return b"".join(signature_list.marshal() for signature_list in lists)


def x509_signature_list(owner: uuid.UUID, certificate_der: bytes) -> SignatureList:
    """One certificate per list, as firmware stores db entries of differing sizes."""
    entry = SignatureEntry(owner, certificate_der)
    return SignatureList(EFI_CERT_X509_GUID, b"", 16 + len(certificate_der), (entry,))


def sha256_signature_list(owner: uuid.UUID, digests: Sequence[bytes]) -> SignatureList:
    entries = tuple(SignatureEntry(owner, digest) for digest in digests)
    return SignatureList(EFI_CERT_SHA256_GUID, b"", 16 + 32, entries)


def secure_boot_variables(platform: PlatformReference) -> list[UefiVariableData]:
    """SecureBoot, PK, KEK, db, dbx, in the order of PFP 3.3.4.8."""
    return [
        UefiVariableData(EFI_GLOBAL_VARIABLE, "SecureBoot", bytes([int(platform.secure_boot)])),
        UefiVariableData(EFI_GLOBAL_VARIABLE, "PK", signature_list_bytes(platform.pk)),
        UefiVariableData(EFI_GLOBAL_VARIABLE, "KEK", signature_list_bytes(platform.kek)),
        UefiVariableData(EFI_IMAGE_SECURITY_DATABASE_GUID, "db", signature_list_bytes(platform.db)),
        UefiVariableData(
            EFI_IMAGE_SECURITY_DATABASE_GUID, "dbx", signature_list_bytes(platform.dbx)
        ),
    ]


def authority_event_data(entry: SignatureEntry) -> bytes:
    """EV_EFI_VARIABLE_AUTHORITY data: the EFI_SIGNATURE_DATA from db (PFP 3.3.4.8)."""
    return UefiVariableData(
        EFI_IMAGE_SECURITY_DATABASE_GUID, "db", entry.owner.bytes_le + entry.data
    ).encode()


def image_event_data(stage: StageImage, index: int) -> bytes:
    return ImageLoadData(
        _IMAGE_BASE - index * _IMAGE_STRIDE, stage.length, 0, stage.device_path
    ).encode()


def grub_config(release: ReleaseReference) -> bytes:
    """The grub.cfg the development bootloader reads (and measures into PCR 9)."""
    return (
        "set timeout=0\n"
        f"menuentry '{release.name} {release.version}' {{\n"
        f"\tlinux {release.kernel_path} {release.cmdline}\n"
        f"\tinitrd {release.initrd_path}\n"
        "}\n"
    ).encode()


def release_event_text(release: ReleaseReference) -> str:
    return (
        f"{RELEASE_EVENT_PREFIX}{release.name} {release.version} "
        f"sha256:{release.manifest_sha256.hex()}"
    )


def usr_verity_event_text(root_hash: bytes) -> str:
    return f"{USR_VERITY_EVENT_PREFIX}{root_hash.hex()}"


def kernel_stage(platform: PlatformReference, release: ReleaseReference) -> StageImage:
    return StageImage(
        name="kernel",
        esp_path=release.kernel_path,
        device_path=esp_file_device_path(platform.esp_device_path, release.kernel_path),
        length=release.kernel_length,
        authenticode=release.kernel_authenticode,
    )


@dataclass
class _Chain:
    """Which db entries have been measured as authorities already (once each, PFP 3.3.4.8)."""

    measurer: _Measurer
    platform: PlatformReference
    authorize: Authorize
    measured_authorities: list[SignatureEntry] = field(default_factory=list)
    loaded: int = 0

    def load(self, stage: StageImage) -> Iterator[Measurement]:
        if self.platform.secure_boot:
            entry = self.authorize(stage)
            if entry not in self.measured_authorities:
                self.measured_authorities.append(entry)
                yield self.measurer.of_data(
                    SECURE_BOOT_PCR,
                    EventType.EV_EFI_VARIABLE_AUTHORITY,
                    authority_event_data(entry),
                )
        yield self.measurer.of_digests(
            BOOT_MANAGER_CODE_PCR,
            EventType.EV_EFI_BOOT_SERVICES_APPLICATION,
            image_event_data(stage, self.loaded),
            stage.authenticode,
            f"the {stage.name} image",
        )
        self.loaded += 1


def measured_boot(
    platform: PlatformReference,
    release: ReleaseReference,
    banks: Sequence[int],
    authorize: Authorize,
) -> Iterator[Measurement]:
    """Every measurement of one boot, in log order. A consumer that extends a TPM as it
    iterates stops exactly where ``authorize`` raises, as a halted boot does."""
    m = _Measurer(banks)
    if platform.startup_locality:
        yield m.no_action(StartupLocalityData(platform.startup_locality).encode())
    crtm = TextData(platform.crtm_version, utf16=True, nul_terminated=True).encode()
    yield m.of_data(0, EventType.EV_S_CRTM_VERSION, crtm)
    for blob in platform.firmware_blobs:
        yield m.of_digests(
            0,
            EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2,
            FirmwareBlobData(blob.base, blob.length, blob.description).encode(),
            blob.digests,
            f"firmware volume {blob.description.decode(errors='replace')}",
        )
    for variable in secure_boot_variables(platform):
        yield m.of_data(SECURE_BOOT_PCR, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, variable.encode())
    yield m.separator(SECURE_BOOT_PCR)
    for name, contents in platform.boot_variables:
        data = UefiVariableData(EFI_GLOBAL_VARIABLE, name, contents).encode()
        yield m.of_bytes(1, EventType.EV_EFI_VARIABLE_BOOT, data, contents)
    yield m.efi_action(BOOT_MANAGER_CODE_PCR, CALLING_EFI_APPLICATION)
    for pcr in range(7):
        yield m.separator(pcr)
    if platform.gpt is not None:
        yield m.of_data(5, EventType.EV_EFI_GPT_EVENT, platform.gpt)

    chain = _Chain(m, platform, authorize)
    for stage in platform.stages:
        yield from chain.load(stage)
    yield from _bootloader(m, release, lambda: chain.load(kernel_stage(platform, release)))
    yield m.efi_action(5, EXIT_BOOT_SERVICES_INVOCATION)
    yield m.efi_action(5, EXIT_BOOT_SERVICES_SUCCESS)


def release_measurements(release: ReleaseReference, banks: Sequence[int]) -> list[Measurement]:
    """What the bootloader measures of ``release`` into PCRs 8, 9 and 12, whatever the
    platform: the part of a boot a signed release predicts on a captured (real) platform.
    The kernel's own PCR 4 event is the platform's (it loads it); its digest is
    ``release.kernel_authenticode``."""
    return list(_bootloader(_Measurer(banks), release, lambda: iter(())))


def _bootloader(
    m: _Measurer, release: ReleaseReference, load_kernel: Callable[[], Iterator[Measurement]]
) -> Iterator[Measurement]:
    """The bootloader, measuring as GRUB 2 does; ``load_kernel`` runs the kernel image
    through the firmware (PCR 7 authority, PCR 4 application) when it is loaded."""
    config = grub_config(release)
    yield m.grub_file(
        GRUB_ESP_DEVICE + GRUB_CONFIG_PATH,
        {alg: HASHES[alg].digest(config) for alg in m.banks},
    )
    linux = f"{release.kernel_path} {release.cmdline}"
    yield m.grub_string(GRUB_COMMAND_PREFIX, f"linux {linux}")
    yield m.grub_file(release.kernel_path, release.kernel_file)
    yield from load_kernel()
    yield m.grub_string(GRUB_KERNEL_CMDLINE_PREFIX, linux)
    yield m.grub_string(GRUB_COMMAND_PREFIX, f"initrd {release.initrd_path}")
    yield m.grub_file(release.initrd_path, release.initrd_file)
    yield m.of_data(RELEASE_PCR, EventType.EV_IPL, release_event_text(release).encode())
    yield m.of_data(
        RELEASE_PCR, EventType.EV_IPL, usr_verity_event_text(release.usr_root_hash).encode()
    )


# -- the log -----------------------------------------------------------------------


def spec_id_event(banks: Sequence[int]) -> SpecIdEvent:
    """TCG_EfiSpecIDEvent naming every bank (PFP 10.4.5.1): PC Client, spec 2.0, UINT64."""
    return SpecIdEvent(
        signature=SPEC_ID_SIGNATURE_AGILE,
        platform_class=0,
        spec_version_minor=0,
        spec_version_major=2,
        spec_errata=0,
        uintn_size=2,
        algorithms=tuple(AlgorithmSize(alg, HASHES[alg].digest_size) for alg in banks),
        vendor_info=b"",
    )


def event_log(banks: Sequence[int], measurements: Sequence[Measurement]) -> EventLog:
    """A crypto-agile log: the Spec ID header (SHA-1 format, zero digest) and the events."""
    spec = spec_id_event(banks)
    header = Event(0, 0, EventType.EV_NO_ACTION, ((0x0004, bytes(20)),), spec.marshal(), 0)
    events = [header]
    for number, measurement in enumerate(measurements, start=1):
        events.append(
            Event(
                number,
                measurement.pcr,
                measurement.event_type,
                measurement.digests,
                measurement.data,
            )
        )
    return EventLog(True, spec, tuple(events))


def signature_entry_fingerprint(entry: SignatureEntry) -> str:
    """Lowercase hex SHA-256 of an entry's data (the certificate DER, or the digest)."""
    return hashlib.sha256(entry.data).hexdigest()
