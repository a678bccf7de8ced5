"""Authenticode PE digests against pesign and sbsigntool, on real EFI binaries from
Debian's systemd-boot-efi and on small synthetic PE images."""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from stockade.release.authenticode import authenticode_digest
from stockade.release.errors import NotPeImage
from stockade.release.keys import KeyType, generate_key_set

EFI_DIR = Path("/usr/lib/systemd/boot/efi")
REAL_BINARIES = [EFI_DIR / "systemd-bootx64.efi", EFI_DIR / "linuxx64.efi.stub"]

needs_pesign = pytest.mark.skipif(
    shutil.which("pesign") is None, reason="pesign not installed (scripts/bootstrap.sh)"
)
needs_sbsign = pytest.mark.skipif(
    shutil.which("sbsign") is None, reason="sbsigntool not installed (scripts/bootstrap.sh)"
)


def real_binary(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} missing (Debian systemd-boot-efi; scripts/bootstrap.sh)")
    return path


# Synthetic PE32+ EFI application: headers in 0x200 bytes, two 0x200-byte sections.
OPTIONAL_HEADER = 0x40 + 4 + 20
CHECKSUM_AT = OPTIONAL_HEADER + 64
CERT_DIRECTORY_AT = OPTIONAL_HEADER + 112 + 4 * 8


def synthetic_pe(*, table_in_file_order: bool = True, trailing: bytes = b"") -> bytes:
    dos = bytearray(64)
    dos[:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x40)
    coff = struct.pack("<HHIIIHH", 0x8664, 2, 0, 0, 0, 240, 0x22)
    optional = bytearray(240)
    struct.pack_into("<HBB", optional, 0, 0x20B, 2, 0)
    struct.pack_into("<II", optional, 16, 0x1000, 0x1000)  # entry point, BaseOfCode
    struct.pack_into("<Q", optional, 24, 0x10000000)  # ImageBase
    struct.pack_into("<II", optional, 32, 0x1000, 0x200)  # section, file alignment
    struct.pack_into("<II", optional, 56, 0x3000, 0x200)  # SizeOfImage, SizeOfHeaders
    struct.pack_into("<IH", optional, 64, 0xDEADBEEF, 10)  # CheckSum, EFI application
    struct.pack_into("<I", optional, 108, 16)  # NumberOfRvaAndSizes

    def section(name: bytes, address: int, raw: int) -> bytes:
        return struct.pack("<8sIIIIIIHHI", name, 0x200, address, 0x200, raw, 0, 0, 0, 0,
                           0x60000020)  # fmt: skip

    sections = [section(b".text", 0x1000, 0x200), section(b".data", 0x2000, 0x400)]
    if not table_in_file_order:
        sections.reverse()
    headers = (bytes(dos) + b"PE\0\0" + coff + bytes(optional) + b"".join(sections)).ljust(
        0x200, b"\0"
    )
    body = random.Random(3).randbytes(0x400)
    return headers + body + trailing


def pesign_digest(path: Path) -> str:
    result = subprocess.run(
        ["pesign", "--hash", "--in", str(path)], capture_output=True, text=True, check=True
    )
    line = result.stdout.strip()
    assert line.startswith("hash: "), line
    return line.removeprefix("hash: ")


@pytest.fixture(scope="module")
def secure_boot_keys(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keys")
    return generate_key_set(directory, KeyType.ECDSA_P256, "Test Org", dt.datetime.now(dt.UTC))


def sbsign(keys, unsigned: Path, signed: Path) -> None:
    subprocess.run(
        ["sbsign", "--key", str(keys.paths.secure_boot_key), "--cert",
         str(keys.paths.secure_boot_cert), "--output", str(signed), str(unsigned)],
        capture_output=True, check=True,
    )  # fmt: skip
    verified = subprocess.run(
        ["sbverify", "--cert", str(keys.paths.secure_boot_cert), str(signed)],
        capture_output=True, check=False,
    )  # fmt: skip
    assert verified.returncode == 0, verified.stderr


@pytest.mark.tools
@needs_pesign
@pytest.mark.parametrize("binary", REAL_BINARIES, ids=lambda path: path.name)
def test_digest_of_real_efi_binary_equals_pesign(binary):
    path = real_binary(binary)
    assert authenticode_digest(path.read_bytes()).hex() == pesign_digest(path)


@pytest.mark.tools
@needs_pesign
@needs_sbsign
@pytest.mark.parametrize("binary", REAL_BINARIES, ids=lambda path: path.name)
def test_signed_real_binary_digest_equals_pesign_and_the_signed_digest(
    binary, tmp_path, secure_boot_keys
):
    unsigned = real_binary(binary).read_bytes()
    signed_path = tmp_path / "signed.efi"
    sbsign(secure_boot_keys, real_binary(binary), signed_path)
    signed = signed_path.read_bytes()
    digest = authenticode_digest(signed)
    assert digest.hex() == pesign_digest(signed_path)
    # sbsign first zero-pads the image to 8 bytes (the certificate table is 8-aligned);
    # that padding is image data, so the signed digest is the padded image's digest ...
    padded = unsigned + bytes(-len(unsigned) % 8)
    assert digest == authenticode_digest(padded)
    # ... and it is the digest the PKCS#7 signature carries (SpcIndirectDataContent).
    assert digest in signed[len(padded) :]


@pytest.mark.tools
@needs_sbsign
def test_signing_an_aligned_image_leaves_the_digest_unchanged(tmp_path, secure_boot_keys):
    image = synthetic_pe(trailing=b"T" * 16)
    assert len(image) % 8 == 0
    (tmp_path / "a.efi").write_bytes(image)
    sbsign(secure_boot_keys, tmp_path / "a.efi", tmp_path / "a.signed")
    signed = (tmp_path / "a.signed").read_bytes()
    assert len(signed) > len(image)
    assert authenticode_digest(signed) == authenticode_digest(image)
    assert authenticode_digest(image) in signed[len(image) :]
    # A second signature appended to the table changes nothing either.
    sbsign(secure_boot_keys, tmp_path / "a.signed", tmp_path / "a.twice")
    assert authenticode_digest((tmp_path / "a.twice").read_bytes()) == authenticode_digest(image)


@pytest.mark.tools
@needs_pesign
def test_synthetic_image_with_trailing_data_equals_pesign(tmp_path):
    for trailing in (b"", b"trailing bytes after the last section"):
        path = tmp_path / "t.efi"
        path.write_bytes(synthetic_pe(trailing=trailing))
        assert authenticode_digest(path.read_bytes()).hex() == pesign_digest(path)


@pytest.mark.tools
@needs_sbsign
def test_sections_are_hashed_in_file_order_as_sbsign_and_firmware_do(tmp_path, secure_boot_keys):
    in_order = synthetic_pe(table_in_file_order=True)
    reversed_table = synthetic_pe(table_in_file_order=False)
    assert authenticode_digest(reversed_table) != authenticode_digest(in_order)  # headers differ
    (tmp_path / "r.efi").write_bytes(reversed_table)
    sbsign(secure_boot_keys, tmp_path / "r.efi", tmp_path / "r.signed")
    signed = (tmp_path / "r.signed").read_bytes()
    # pesign 0.112 hashes sections in table order here; the Authenticode specification,
    # EDK2 and sbsigntool sort them by PointerToRawData, and so does Stockade.
    assert authenticode_digest(signed) == authenticode_digest(reversed_table)
    assert authenticode_digest(reversed_table) in signed[len(reversed_table) :]


def test_checksum_and_certificate_table_are_excluded_and_everything_else_counts():
    image = synthetic_pe(trailing=b"tail-data")
    digest = authenticode_digest(image)

    def changed(offset: int, value: bytes) -> bytes:
        return image[:offset] + value + image[offset + len(value) :]

    assert authenticode_digest(changed(CHECKSUM_AT, b"\x01\x02\x03\x04")) == digest
    certificate = b"\x10\x00\x00\x00\x00\x02\x02\x00" + b"\x00" * 8  # WIN_CERTIFICATE, 16 B
    directory = struct.pack("<II", len(image), len(certificate))
    assert authenticode_digest(changed(CERT_DIRECTORY_AT, directory) + certificate) == digest
    # Without the directory entry pointing at it, the same bytes are trailing data.
    assert authenticode_digest(image + certificate) != digest
    for offset in (2, 0x48, 0x100, CHECKSUM_AT + 4, 0x1FF, 0x200, 0x5FF, 0x600):
        assert authenticode_digest(changed(offset, bytes([image[offset] ^ 1]))) != digest, offset


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "MZ"),
        (b"\x7fELF" + bytes(100), "MZ"),
        (b"MZ" + bytes(10), "e_lfanew"),
        (b"MZ" + bytes(0x3A) + b"\x40\0\0\0" + b"NE\0\0" + bytes(40), "PE"),
    ],
)
def test_non_pe_input_is_a_typed_error(raw, reason):
    with pytest.raises(NotPeImage, match=reason):
        authenticode_digest(raw)


def test_every_truncation_and_header_bit_flip_is_a_digest_or_a_typed_error():
    image = synthetic_pe(trailing=b"tail")
    for length in range(len(image)):
        with contextlib.suppress(NotPeImage):
            authenticode_digest(image[:length])
    rng = random.Random(11)
    for _ in range(3000):
        mutated = bytearray(image)
        offset = rng.randrange(0x200)
        mutated[offset] ^= 1 << rng.randrange(8)
        with contextlib.suppress(NotPeImage):
            authenticode_digest(bytes(mutated))


def test_a_section_pointing_past_the_end_of_file_is_rejected():
    image = bytearray(synthetic_pe())
    section_table = OPTIONAL_HEADER + 240
    struct.pack_into("<I", image, section_table + 20, 0x10000)  # PointerToRawData
    with pytest.raises(NotPeImage, match="section 0"):
        authenticode_digest(bytes(image))
