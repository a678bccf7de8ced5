"""Unified Kernel Images for tests, built as systemd 252's documentation builds them: objcopy
of each section onto Debian's ``linuxx64.efi.stub`` (package systemd-boot-efi)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from stockade.release.authenticode import pe_sections

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
ORDER = ("osrel", "cmdline", "splash", "dtb", "pcrpkey", "linux", "initrd")


def build_uki(directory: Path, contents: dict[str, bytes], *, gap: int = 0x1000) -> Path:
    """objcopy each section onto the stub, as systemd 252's documentation builds a UKI:
    one ``--add-section`` and ``--change-section-vma`` per section, each placed after the
    end of the previous one (page-aligned, plus ``gap``), past the stub's own sections."""
    stub = STUB.read_bytes()
    address = max(s.virtual_address + s.virtual_size for s in pe_sections(stub))
    arguments = []
    for name in ORDER:
        if name not in contents:
            continue
        path = directory / name
        path.write_bytes(contents[name])
        address = (address + gap + 0xFFF) & ~0xFFF
        arguments += ["--add-section", f".{name}={path}"]
        arguments += ["--change-section-vma", f".{name}=0x{address:x}"]
        address += len(contents[name])
    uki = directory / "uki.efi"
    subprocess.run(["objcopy", *arguments, str(STUB), str(uki)], check=True, timeout=60)
    return uki
