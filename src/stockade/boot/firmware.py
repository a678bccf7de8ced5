"""The virtual platform's firmware image: one firmware volume, the bytes PCR 0 measures.

It is a real EFI_FIRMWARE_VOLUME_HEADER (PI 1.8, Vol. 3, 3.2.1: "_FVH", a valid
header checksum, one block map entry) followed by the firmware's version string and
erased flash (0xFF). Nothing executes it: the firmware's logic is
``stockade.boot.chain``. What matters is that it is a fixed byte string per firmware
version, so a changed image (``firmware.fv`` in a platform directory) changes PCR 0.
"""

from __future__ import annotations

import struct
import uuid

EFI_FIRMWARE_FILE_SYSTEM2_GUID = uuid.UUID("8c8ce578-8a3d-4f1c-9935-896185c32dd3")
DEFAULT_CRTM_VERSION = "Stockade Virtual Firmware 1.0"
FIRMWARE_BASE = 0xFFC00000  # the volume sits below 4 GiB, as flash is mapped on x86
FIRMWARE_DESCRIPTION = b"Fv(Stockade-DXEFV)"
VOLUME_SIZE = 256 * 1024
BLOCK_SIZE = 4096

# ZeroVector, FileSystemGuid, FvLength, Signature, Attributes, HeaderLength, Checksum,
# ExtHeaderOffset, Reserved, Revision, then BlockMap: (NumBlocks, Length), (0, 0).
_HEADER = struct.Struct("<16s16sQ4sIHHHBBIIII")
_ATTRIBUTES = 0x0004FEFF  # readable, memory-mapped, 8-byte aligned; what OVMF volumes set


def _checksum(header: bytes) -> int:
    """The 16-bit value that makes the header's UINT16 words sum to zero."""
    words: tuple[int, ...] = struct.unpack(f"<{len(header) // 2}H", header)
    return (-sum(words)) & 0xFFFF


def virtual_firmware_volume(version: str = DEFAULT_CRTM_VERSION) -> bytes:
    def header(checksum: int) -> bytes:
        return _HEADER.pack(
            bytes(16),
            EFI_FIRMWARE_FILE_SYSTEM2_GUID.bytes_le,
            VOLUME_SIZE,
            b"_FVH",
            _ATTRIBUTES,
            _HEADER.size,
            checksum,
            0,
            0,
            2,
            VOLUME_SIZE // BLOCK_SIZE,
            BLOCK_SIZE,
            0,
            0,
        )

    head = header(_checksum(header(0)))
    body = version.encode("utf-8") + b"\x00"
    return (head + body).ljust(VOLUME_SIZE, b"\xff")
