"""Fuzz target: Unified Kernel Images (``stockade.appraisal.uki``): the PE section reader
``uki_sections`` and the PCR 11 prediction over what it returns.

    pip install atheris
    python fuzz/fuzz_uki.py [libFuzzer options] [corpus directory]

A good corpus is a few real UKIs, or ``seed_inputs()`` below (small synthetic PE images
with UKI sections). Reading raises ``NotPeImage`` or ``UkiMalformed`` or returns sections;
any other exception is a bug. So is a reading without a ``.linux``, a section longer than
the image could map, or a prediction that raises or whose digests are not the bank's
size. Importable without atheris: tests/release/test_release_uki.py drives
``test_one_input`` directly.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    from stockade.appraisal.uki import BANKS, UkiMalformed, predict_pcr11, uki_sections
    from stockade.release.errors import NotPeImage

_HEADERS = 0x400


def synthetic_uki(sections: list[tuple[bytes, bytes, int, int]]) -> bytes:
    """A PE32+ image with ``(name, raw data, virtual size, virtual address)`` sections,
    raw data 0x200-aligned after 0x400 bytes of headers; SizeOfImage covers them all."""
    optional = 0x40 + 4 + 20
    table = optional + 240
    raw, body = _HEADERS, b""
    headers = []
    for name, data, virtual_size, address in sections:
        padded = data + bytes(-len(data) % 0x200)
        headers.append(
            name.ljust(8, b"\0")[:8]
            + struct.pack("<IIII", virtual_size, address, len(padded), raw if data else 0)
            + bytes(16)
        )
        raw += len(padded)
        body += padded
    image_size = max([address + size for _, _, size, address in sections] + [_HEADERS])
    image = bytearray(_HEADERS)
    image[0:2] = b"MZ"
    image[0x3C:0x40] = struct.pack("<I", 0x40)
    image[0x40:0x44] = b"PE\0\0"
    image[0x44:0x58] = struct.pack("<HHIIIHH", 0x8664, len(sections), 0, 0, 0, 240, 0x22)
    image[optional : optional + 2] = struct.pack("<H", 0x20B)
    image[optional + 56 : optional + 64] = struct.pack("<II", image_size, _HEADERS)
    image[optional + 108 : optional + 112] = struct.pack("<I", 16)
    table_bytes = b"".join(headers)
    image[table : table + len(table_bytes)] = table_bytes[: _HEADERS - table]
    return bytes(image) + body


def seed_inputs() -> list[bytes]:
    """UKIs read, refused and read the stub's way, for a starting corpus."""
    return [
        synthetic_uki([(b".linux", b"MZkernel", 8, 0x1000), (b".osrel", b"ID=x\n", 5, 0x2000)]),
        synthetic_uki([(b".linux", b"k" * 700, 0x1000, 0x1000), (b".initrd", b"i", 1, 0x2000)]),
        synthetic_uki([(b".linuxZ", b"a", 1, 0x1000), (b".linux", b"b", 0, 0x2000)]),
        synthetic_uki([(b".linux", b"a", 0x2000, 0x1000), (b".cmdline", b"q", 1, 0x2000)]),
        synthetic_uki([(b".osrel", b"ID=x\n", 5, 0x1000)]),
        b"MZ" + bytes(62),
    ]


def test_one_input(data: bytes) -> None:
    try:
        sections = uki_sections(data)
    except (NotPeImage, UkiMalformed):
        return
    if not sections.linux:
        raise AssertionError("read a UKI without .linux")
    for name, contents in sections.measured():
        if len(contents) >= 1 << 32:
            raise AssertionError(f"{name} longer than a PE section can be")
    for bank in BANKS:
        for pcr in predict_pcr11(sections, bank).values():
            if len(pcr) != {"sha1": 20, "sha256": 32, "sha384": 48, "sha512": 64}[bank]:
                raise AssertionError(f"{bank} digest of {len(pcr)} bytes")


if __name__ == "__main__":
    fuzz(test_one_input)
