"""The development node's boot disk: a GPT (UEFI 2.10, 5.3) with an EFI system partition,
a /usr partition, its dm-verity partition and a root partition, as the firmware
measures it into PCR 5 (UEFI_GPT_DATA), and the device path of the ESP
that boot options and image load events name.

Only the partition table exists; the files "on" the ESP are ordinary files.
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass

from stockade.appraisal.measured_boot import (
    esp_file_device_path,
    hard_drive_node,
    pci_node,
    pci_root_node,
    sata_node,
)
from stockade.evidence.event_data import GptData, GptPartition, LoadOption

SECTOR_SIZE = 512
ENTRY_SIZE = 128
ENTRY_COUNT = 128
LOAD_OPTION_ACTIVE = 0x00000001

# Partition type GUIDs: UEFI 2.10 Table 5.7, and the Discoverable Partitions Specification.
ESP_TYPE = uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
USR_X86_64_TYPE = uuid.UUID("8484680c-9521-48c6-9c11-b0720656f69e")
USR_VERITY_X86_64_TYPE = uuid.UUID("77ff5f63-e7b6-4633-acf4-1565b864c0e6")
ROOT_X86_64_TYPE = uuid.UUID("4f68bce3-e8cd-4db1-96e7-fbcaf984b709")

DEFAULT_DISK_GUID = uuid.UUID("5a7c0de0-57c0-4ade-8b00-7d15c0000001")
_MIB = 1024 * 1024 // SECTOR_SIZE

_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_ENTRY = struct.Struct("<16s16sQQQ72s")


@dataclass(frozen=True)
class Partition:
    number: int
    type_guid: uuid.UUID
    unique_guid: uuid.UUID
    first_lba: int
    last_lba: int
    name: str

    @property
    def size(self) -> int:
        return self.last_lba - self.first_lba + 1

    def entry(self) -> bytes:
        name = self.name.encode("utf-16-le").ljust(72, b"\x00")
        return _ENTRY.pack(
            self.type_guid.bytes_le,
            self.unique_guid.bytes_le,
            self.first_lba,
            self.last_lba,
            0,
            name,
        )


@dataclass(frozen=True)
class VirtualDisk:
    """An 8 GiB SATA disk: ESP (512 MiB), /usr (2 GiB), /usr verity (128 MiB), root."""

    disk_guid: uuid.UUID = DEFAULT_DISK_GUID
    sectors: int = 8 * 1024 * 1024 * 1024 // SECTOR_SIZE

    def partitions(self) -> tuple[Partition, ...]:
        layout = (
            (ESP_TYPE, 512, "EFI System Partition"),
            (USR_X86_64_TYPE, 2048, "usr"),
            (USR_VERITY_X86_64_TYPE, 128, "usr-verity"),
        )
        partitions = []
        first = _MIB
        for number, (type_guid, mib, name) in enumerate(layout, start=1):
            last = first + mib * _MIB - 1
            unique = uuid.uuid5(self.disk_guid, f"partition-{number}")
            partitions.append(Partition(number, type_guid, unique, first, last, name))
            first = last + 1
        unique = uuid.uuid5(self.disk_guid, "partition-4")
        partitions.append(
            Partition(4, ROOT_X86_64_TYPE, unique, first, self._last_usable(), "root")
        )
        return tuple(partitions)

    def _last_usable(self) -> int:
        return self.sectors - 1 - 1 - ENTRY_COUNT * ENTRY_SIZE // SECTOR_SIZE

    @property
    def esp(self) -> Partition:
        return self.partitions()[0]

    def gpt_event_data(self) -> bytes:
        """UEFI_GPT_DATA: the primary GPT header, then the partitions in use."""
        partitions = self.partitions()
        entries = b"".join(p.entry() for p in partitions).ljust(ENTRY_COUNT * ENTRY_SIZE, b"\0")

        def header(crc: int) -> bytes:
            return _GPT_HEADER.pack(
                b"EFI PART",
                0x00010000,
                _GPT_HEADER.size,
                crc,
                0,
                1,
                self.sectors - 1,
                2 + ENTRY_COUNT * ENTRY_SIZE // SECTOR_SIZE,
                self._last_usable(),
                self.disk_guid.bytes_le,
                2,
                ENTRY_COUNT,
                ENTRY_SIZE,
                zlib.crc32(entries),
            )

        gpt = GptData(
            header=header(zlib.crc32(header(0))),
            entry_size=ENTRY_SIZE,
            partitions=tuple(
                GptPartition(
                    p.type_guid,
                    p.unique_guid,
                    p.first_lba,
                    p.last_lba,
                    0,
                    p.name.encode("utf-16-le").ljust(72, b"\x00"),
                )
                for p in partitions
            ),
            partition_padding=tuple(b"" for _ in partitions),
        )
        return gpt.encode()

    def esp_device_path(self) -> bytes:
        """PciRoot(0x0)/Pci(0x1f,0x2)/Sata(0,65535,0)/HD(1,GPT,...): the ESP, no End node."""
        esp = self.esp
        return (
            pci_root_node(0)
            + pci_node(0x1F, 0x2)
            + sata_node(0)
            + hard_drive_node(esp.number, esp.first_lba, esp.size, esp.unique_guid)
        )


def boot_variables(
    disk: VirtualDisk, loader_path: str, description: str
) -> tuple[tuple[str, bytes], ...]:
    """BootOrder = [0] and Boot0000: an active load option for ``loader_path`` on the ESP."""
    option = LoadOption(
        attributes=LOAD_OPTION_ACTIVE,
        description=description,
        file_path_list=esp_file_device_path(disk.esp_device_path(), loader_path),
        optional_data=b"",
    )
    return (("BootOrder", struct.pack("<H", 0)), ("Boot0000", option.encode()))
