"""The Authenticode digest of a PE/COFF image: what UEFI firmware measures into PCR 4
for an EFI application and what a Secure Boot signature covers.

Source: Microsoft, "Windows Authenticode Portable Executable Signature Format"
(section "Calculating the PE Image Hash") and the PE Format specification
("Optional Header Windows-Specific Fields", "Optional Header Data Directories",
"The Attribute Certificate Table"). The digest covers the headers without the
CheckSum field and the Certificate Table data directory entry, then every
section's raw data in the order of PointerToRawData, then any data after the
last section except the attribute certificate table, which sits at the end of
the file. Signing appends to that table only, so it leaves the digest alone.
"""

from __future__ import annotations

import hashlib
import struct
from typing import NamedTuple

from stockade.release.errors import NotPeImage

_DOS_MAGIC = b"MZ"
_PE_SIGNATURE = b"PE\x00\x00"
_E_LFANEW_OFFSET = 0x3C
_COFF_HEADER = struct.Struct("<HHIIIHH")  # Machine .. Characteristics
_SECTION_HEADER_SIZE = 40
_PE32_MAGIC = 0x10B
_PE32_PLUS_MAGIC = 0x20B
_CHECKSUM_OFFSET = 64  # in the optional header, PE32 and PE32+ alike
_SIZE_OF_IMAGE_OFFSET = 56
_SIZE_OF_HEADERS_OFFSET = 60
# NumberOfRvaAndSizes, then the data directories, per optional header magic
_DIRECTORY_OFFSETS = {_PE32_MAGIC: 92, _PE32_PLUS_MAGIC: 108}
_CERTIFICATE_TABLE_INDEX = 4


def _u16(image: bytes, offset: int, field: str) -> int:
    if offset + 2 > len(image):
        raise NotPeImage(f"file ends inside {field}", offset)
    return int.from_bytes(image[offset : offset + 2], "little")


def _u32(image: bytes, offset: int, field: str) -> int:
    if offset + 4 > len(image):
        raise NotPeImage(f"file ends inside {field}", offset)
    return int.from_bytes(image[offset : offset + 4], "little")


class PeSection(NamedTuple):
    """One section header: its 8-byte name (NUL padding kept) and where its data lies."""

    name: bytes
    virtual_size: int
    virtual_address: int
    raw_size: int
    raw_pointer: int
    header_offset: int


class _Headers(NamedTuple):
    checksum: int
    size_of_headers: int
    size_of_image: int
    directory_count: int
    directories: int
    section_table: int
    section_count: int


def _headers(image: bytes) -> _Headers:
    if image[:2] != _DOS_MAGIC:
        raise NotPeImage("no 'MZ' DOS header", 0)
    pe_offset = _u32(image, _E_LFANEW_OFFSET, "e_lfanew")
    if image[pe_offset : pe_offset + 4] != _PE_SIGNATURE:
        raise NotPeImage("no 'PE\\0\\0' signature where e_lfanew points", pe_offset)
    coff = pe_offset + 4
    if coff + _COFF_HEADER.size > len(image):
        raise NotPeImage("file ends inside the COFF header", coff)
    _, section_count, _, _, _, optional_size, _ = _COFF_HEADER.unpack_from(image, coff)
    optional = coff + _COFF_HEADER.size
    magic = _u16(image, optional, "optional header magic")
    if magic not in _DIRECTORY_OFFSETS:
        raise NotPeImage(f"optional header magic 0x{magic:04x} is neither PE32 nor PE32+", optional)
    size_of_image = _u32(image, optional + _SIZE_OF_IMAGE_OFFSET, "SizeOfImage")
    size_of_headers = _u32(image, optional + _SIZE_OF_HEADERS_OFFSET, "SizeOfHeaders")
    directory_count_at = optional + _DIRECTORY_OFFSETS[magic]
    directory_count = _u32(image, directory_count_at, "NumberOfRvaAndSizes")
    directories = directory_count_at + 4
    if (directories - optional) + 8 * directory_count > optional_size:
        raise NotPeImage("data directories overrun SizeOfOptionalHeader", directory_count_at)
    section_table = optional + optional_size
    if section_table + section_count * _SECTION_HEADER_SIZE > size_of_headers:
        raise NotPeImage("section table extends past SizeOfHeaders", section_table)
    if size_of_headers > len(image):
        raise NotPeImage(f"SizeOfHeaders {size_of_headers} exceeds the file size", optional + 60)
    return _Headers(
        optional + _CHECKSUM_OFFSET,
        size_of_headers,
        size_of_image,
        directory_count,
        directories,
        section_table,
        section_count,
    )


def pe_sections(image: bytes) -> tuple[PeSection, ...]:
    """The section headers of ``image`` in table order; ``NotPeImage`` when the headers do
    not hold or a section's raw data lies outside the file."""
    headers = _headers(image)
    sections = []
    for index in range(headers.section_count):
        at = headers.section_table + index * _SECTION_HEADER_SIZE
        name = image[at : at + 8]
        virtual_size, virtual_address, raw_size, raw_pointer = struct.unpack_from(
            "<IIII", image, at + 8
        )
        if raw_size and raw_pointer + raw_size > len(image):
            raise NotPeImage(f"section {index} raw data extends past the end of file", at)
        sections.append(PeSection(name, virtual_size, virtual_address, raw_size, raw_pointer, at))
    return tuple(sections)


def pe_image_size(image: bytes) -> tuple[int, int]:
    """``(SizeOfHeaders, SizeOfImage)`` of ``image``: the loader maps the headers, then
    each section at its virtual address, into ``SizeOfImage`` bytes."""
    headers = _headers(image)
    return headers.size_of_headers, headers.size_of_image


def authenticode_digest(image: bytes, algorithm: str = "sha256") -> bytes:
    """The Authenticode digest of ``image``; ``NotPeImage`` names the field when it is not
    a PE/COFF image or its headers point outside the file."""
    headers = _headers(image)
    checksum = headers.checksum
    size_of_headers = headers.size_of_headers
    directory_count = headers.directory_count
    directories = headers.directories
    section_table = headers.section_table
    section_count = headers.section_count

    digest = hashlib.new(algorithm)
    view = memoryview(image)
    digest.update(view[:checksum])
    certificate_size = 0
    if directory_count > _CERTIFICATE_TABLE_INDEX:
        entry = directories + 8 * _CERTIFICATE_TABLE_INDEX
        certificate_offset = _u32(image, entry, "Certificate Table address")
        certificate_size = _u32(image, entry + 4, "Certificate Table size")
        if certificate_size and certificate_offset + certificate_size > len(image):
            raise NotPeImage("attribute certificate table extends past the end of file", entry)
        digest.update(view[checksum + 4 : entry])
        digest.update(view[entry + 8 : size_of_headers])
    else:
        digest.update(view[checksum + 4 : size_of_headers])

    sections = []
    for index in range(section_count):
        header = section_table + index * _SECTION_HEADER_SIZE
        raw_size = _u32(image, header + 16, "SizeOfRawData")
        raw_pointer = _u32(image, header + 20, "PointerToRawData")
        if raw_size == 0:
            continue
        if raw_pointer + raw_size > len(image):
            raise NotPeImage(f"section {index} raw data extends past the end of file", header)
        sections.append((raw_pointer, raw_size))
    hashed = size_of_headers
    for raw_pointer, raw_size in sorted(sections):
        digest.update(view[raw_pointer : raw_pointer + raw_size])
        hashed += raw_size

    if len(image) > hashed:
        if len(image) < hashed + certificate_size:
            raise NotPeImage("attribute certificate table overlaps the sections", hashed)
        digest.update(view[hashed : len(image) - certificate_size])
    return digest.digest()
