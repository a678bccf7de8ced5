"""Session fixtures for the boot chain: keys, a platform with Debian's shim and GRUB signed
by sbsign, a signed release, and the attack kernels, each made once per session.

The kernel is systemd's EFI stub (linuxx64.efi.stub from systemd-boot-efi), a real
PE/COFF EFI application standing in for an EFI-stub Linux kernel.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from stockade.appraisal.measured_boot import PlatformReference
from stockade.appraisal.reference import platform_from_json
from stockade.boot.platform import (
    DEBIAN_GRUB,
    DEBIAN_SHIM,
    REFERENCE_FILE,
    DevelopmentPlatform,
    create_development_platform,
)
from stockade.boot.secure_boot import sign_image
from stockade.boot.tamper import flip_section_byte
from stockade.release.build import ReleaseInputs, build_release
from stockade.release.keys import GeneratedKeys, KeyType, generate_key_set
from stockade.release.manifest import Manifest

KERNEL_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
CMDLINE = "ro console=ttyS0 quiet"
NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


@pytest.fixture(scope="session", autouse=True)
def _require_boot_tools() -> None:
    missing = [tool for tool in ("sbsign", "sbverify", "tpm2_eventlog") if not shutil.which(tool)]
    missing += [str(path) for path in (DEBIAN_SHIM, DEBIAN_GRUB, KERNEL_STUB) if not path.exists()]
    if missing:
        pytest.skip(
            f"missing {', '.join(missing)} (Debian sbsigntool, tpm2-tools, shim-unsigned, "
            "grub-efi-amd64-bin, systemd-boot-efi; scripts/bootstrap.sh)"
        )


@dataclass(frozen=True)
class Kernels:
    signed: Path
    unsigned: Path
    rogue: Path  # signed by a key that is not in db
    modified: Path  # signed, then a byte of a section flipped


@dataclass(frozen=True)
class Release:
    directory: Path
    manifest: Manifest


@pytest.fixture(scope="session")
def boot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("boot")


@pytest.fixture(scope="session")
def org_keys(boot_dir: Path) -> GeneratedKeys:
    return generate_key_set(boot_dir / "keys", KeyType.ECDSA_P256, "Stockade Test", NOW)


@pytest.fixture(scope="session")
def rogue_keys(boot_dir: Path) -> GeneratedKeys:
    return generate_key_set(boot_dir / "rogue-keys", KeyType.ED25519, "Rogue", NOW)


@pytest.fixture(scope="session")
def platform_dir(boot_dir: Path, org_keys: GeneratedKeys) -> Path:
    directory = boot_dir / "platform"
    create_development_platform(
        directory, org_keys.paths.secure_boot_key, org_keys.paths.secure_boot_cert
    )
    return directory


@pytest.fixture(scope="session")
def platform(platform_dir: Path) -> DevelopmentPlatform:
    return DevelopmentPlatform.load(platform_dir)


@pytest.fixture(scope="session")
def platform_reference(platform_dir: Path) -> PlatformReference:
    return platform_from_json(json.loads((platform_dir / REFERENCE_FILE).read_text()))


@pytest.fixture(scope="session")
def kernels(boot_dir: Path, org_keys: GeneratedKeys, rogue_keys: GeneratedKeys) -> Kernels:
    directory = boot_dir / "kernels"
    directory.mkdir()
    signed = directory / "vmlinuz.signed"
    sign_image(KERNEL_STUB, signed, org_keys.paths.secure_boot_key, org_keys.paths.secure_boot_cert)
    rogue = directory / "vmlinuz.rogue"
    sign_image(
        KERNEL_STUB, rogue, rogue_keys.paths.secure_boot_key, rogue_keys.paths.secure_boot_cert
    )
    modified = directory / "vmlinuz.modified"
    modified.write_bytes(flip_section_byte(signed.read_bytes()))
    unsigned = directory / "vmlinuz.unsigned"
    shutil.copyfile(KERNEL_STUB, unsigned)
    return Kernels(signed, unsigned, rogue, modified)


@pytest.fixture(scope="session")
def release(boot_dir: Path, kernels: Kernels) -> Release:
    generator = random.Random(3)
    initrd = boot_dir / "initrd.in"
    initrd.write_bytes(generator.randbytes(20000))
    usr = boot_dir / "usr.in"
    usr.write_bytes(generator.randbytes(5 * 4096))
    directory = boot_dir / "release"
    inputs = ReleaseInputs("stockade-os", "1.0.0", 3, kernels.signed, initrd, CMDLINE, usr)
    manifest = build_release(inputs, directory, NOW, salt=bytes(32))
    return Release(directory, manifest)


@pytest.fixture(scope="session")
def modified_usr(boot_dir: Path, release: Release) -> Path:
    """The release's /usr image with one byte of its last block changed."""
    image = bytearray((release.directory / release.manifest.usr.path).read_bytes())
    image[-100] ^= 0x01
    path = boot_dir / "usr.modified"
    path.write_bytes(bytes(image))
    return path
