"""Attack inputs for development nodes: a signed EFI image changed after signing.

Flipping a byte inside a section's raw data changes the image's Authenticode
digest (so PCR 4 changes and its signature no longer verifies) while the file
still parses as PE/COFF, the way a patched kernel would.
"""

from __future__ import annotations

import struct

from stockade.boot.errors import BootInputError


def flip_section_byte(image: bytes) -> bytes:
    """``image`` with one byte in the middle of its first non-empty section inverted
    (PE/COFF: e_lfanew at 0x3C, 40-byte section headers after the optional header)."""
    try:
        pe = struct.unpack_from("<I", image, 0x3C)[0]
        sections, optional_size = struct.unpack_from("<2xH12xH", image, pe + 4)
        table = pe + 24 + optional_size
        for index in range(sections):
            raw_size, raw_pointer = struct.unpack_from("<II", image, table + 40 * index + 16)
            at = raw_pointer + raw_size // 2
            if raw_size and at < len(image):
                return image[:at] + bytes([image[at] ^ 0xFF]) + image[at + 1 :]
    except struct.error:
        pass
    raise BootInputError("not a PE image with a section to modify")
