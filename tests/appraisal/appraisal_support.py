"""Helpers for the appraisal tests: what a scenario is made of, and how its evidence is
captured (a boot on a software TPM, then a quote)."""

from __future__ import annotations

import datetime as dt
import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.appraisal.appraise import Evidence
from stockade.boot import boot_node, load_release
from stockade.boot.platform import (
    DevelopmentPlatform,
)
from stockade.evidence.attest import Attest, ClockInfo
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.public import TpmPublic
from stockade.evidence.templates import KeyKind
from stockade.release.build import ReleaseInputs, build_release
from stockade.release.dsse import Envelope
from stockade.release.keys import GeneratedKeys, load_signing_key
from stockade.release.manifest import Manifest, sign_manifest
from stockade.tpm.ak import AttestationKey, create_ak
from stockade.tpm.device import Tpm
from stockade.tpm.quote import quote
from stockade.tpm.swtpm import SoftwareTpm

KERNEL_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
CMDLINE = "ro console=ttyS0 quiet"
NOW = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
PCRS = "sha256:0,1,2,3,4,5,6,7,8,9,12"


def nonce(label: str) -> bytes:
    return hashlib.sha256(label.encode()).digest()


@dataclass(frozen=True)
class Release:
    directory: Path
    manifest: Manifest
    envelope: Envelope


@dataclass(frozen=True)
class World:
    """Everything a policy is made from."""

    keys: GeneratedKeys
    rogue_keys: GeneratedKeys
    platform: DevelopmentPlatform
    platform_document: dict[str, Any]
    signed_kernel: Path
    modified_kernel: Path
    current: Release  # 1.0.0, security version 3
    old: Release  # 0.9.0, security version 2

    def document(self, **changes: Any) -> dict[str, Any]:
        """The test policy document, with top-level fields replaced."""
        document: dict[str, Any] = {
            "id": "production",
            "pcrs": PCRS,
            "result_validity_seconds": 120,
            "releases": {
                "signers": [self.keys.paths.org_pub.read_text()],
                "min_security_version": 3,
                "manifests": [self.current.envelope.to_json()],
            },
            "platforms": [self.platform_document],
            "secure_boot": {
                "required": True,
                "db_must_contain": [self.keys.secure_boot_fingerprint],
                "dbx_must_contain": [],
            },
            "enforce": {"release": "enforce", "secure_boot": "enforce"},
        }
        document.update(changes)
        return document


def make_release(
    base: Path, keys: GeneratedKeys, kernel: Path, version: str, security: int, seed: int
) -> Release:
    generator = random.Random(seed)
    initrd = base / f"initrd-{version}.in"
    initrd.write_bytes(generator.randbytes(20000))
    usr = base / f"usr-{version}.in"
    usr.write_bytes(generator.randbytes(5 * 4096))
    inputs = ReleaseInputs("stockade-os", version, security, kernel, initrd, CMDLINE, usr)
    directory = base / f"release-{version}"
    manifest = build_release(inputs, directory, NOW, salt=bytes(32))
    signer = load_signing_key(keys.paths.org_key.read_bytes())
    return Release(directory, manifest, sign_manifest(manifest, [signer]))


@dataclass(frozen=True)
class Captured:
    evidence: Evidence
    clock: ClockInfo


@dataclass(frozen=True)
class Boots:
    """Real evidence from the node's TPM (and one from another TPM), by scenario."""

    ak: TpmPublic
    good: Captured  # release 1.0.0, Secure Boot on
    good_later: Captured  # a second quote in the same boot
    reboot: Captured  # the same release after a reboot
    tampered: Captured  # Secure Boot off and a modified kernel
    secure_boot_off: Captured  # Secure Boot off, the signed kernel
    rollback: Captured  # release 0.9.0 (security version 2)
    other_tpm: Captured  # a good boot quoted by another TPM's AK


def capture(tpm: SoftwareTpm, ak: AttestationKey, log: bytes, label: str) -> Captured:
    value = nonce(label)
    with Tpm(tpm.tcti) as device:
        made = quote(device, ak, PcrSelection.parse(PCRS), value)
    evidence = Evidence(value, made.message, made.signature, made.pcr_values, log)
    return Captured(evidence, Attest.unmarshal(made.message).clock_info)


def boot_release(
    tpm: SoftwareTpm, platform: DevelopmentPlatform, release: Path, **files: Path
) -> bytes:
    result = boot_node(tpm, platform, load_release(release, **files))
    assert result.booted, result.halted
    return result.log_bytes


def make_ak(tpm: SoftwareTpm) -> AttestationKey:
    with Tpm(tpm.tcti) as device:
        return create_ak(device, KeyKind.ECC)
