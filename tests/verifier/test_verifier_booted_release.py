"""Which release a result records (``attestation.booted_release``): the reference entry the
PCRs equal, or on a captured platform the accepted release or UKI matched by label, or none."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from types import SimpleNamespace
from typing import Any
from uuid import UUID

from stockade.appraisal.appraise import AFFIRMING, CLAIMS, Appraisal, ReferenceEntry, Status
from stockade.appraisal.uki import UkiReference
from stockade.release.manifest import (
    FileDigest,
    KernelFile,
    Manifest,
    UsrImage,
    VerityInfo,
    manifest_digest,
)
from stockade.verifier.attestation import BootedRelease, booted_release
from stockade.verifier.service import ActivePolicy

ROOT = bytes(range(32))


def manifest(version: str, security_version: int) -> Manifest:
    verity = VerityInfo(
        root_hash=ROOT, salt=b"\x01" * 32, hash_algorithm="sha256", data_block_size=4096,
        hash_block_size=4096, data_blocks=10,
        uuid=UUID("11111111-2222-4333-8444-555555555555"),
        hash_file=FileDigest("usr.verity", 8192, b"\x02" * 32),
    )  # fmt: skip
    return Manifest(
        name="stockade-os",
        version=version,
        security_version=security_version,
        created=dt.datetime(2026, 5, 1, tzinfo=dt.UTC),
        cmdline=f"console=ttyS0 ro usrhash={ROOT.hex()}",
        kernel=KernelFile(FileDigest("vmlinuz", 100, b"\x03" * 32), b"\x04" * 32),
        initrd=FileDigest("initrd.img", 50, b"\x05" * 32),
        usr=UsrImage("usr.img", 40960, verity),
    )


def appraisal(**fields: Any) -> Appraisal:
    base = Appraisal(
        status=Status.AFFIRMING,
        trust_vector=dict.fromkeys(CLAIMS, AFFIRMING),
        reasons=(),
        clock=None,
        new_boot=False,
        policy_ref="p@1",
        matched_release=None,
    )
    return replace(base, **fields)


def active(releases: tuple[Manifest, ...], ukis: tuple[UkiReference, ...] = ()) -> ActivePolicy:
    policy = SimpleNamespace(releases=releases, ukis=ukis)
    return ActivePolicy("p", 1, policy, object())  # type: ignore[arg-type]


def test_a_reference_entry_gives_its_manifests_fields() -> None:
    entry = ReferenceEntry(
        platform_index=0, platform_description="platform 0", release_name="stockade-os",
        release_version="2.0", security_version=7, manifest_digest=b"\xab" * 32,
        values=None, log=None, labels=(), secure_boot_failures=(),  # type: ignore[arg-type]
    )  # fmt: skip
    found = booted_release(active(()), appraisal(matched_release="x", matched_reference=entry))
    assert found == BootedRelease("stockade-os", "2.0", 7, "ab" * 32)


def test_a_captured_match_is_looked_up_by_label() -> None:
    old, new = manifest("1.0", 3), manifest("1.1", 4)
    uki = UkiReference("uki-6.1", b"\x01" * 32, b"\x02" * 32)
    policy = active((old, new), (uki,))
    found = booted_release(policy, appraisal(matched_release="stockade-os 1.1"))
    assert found == BootedRelease("stockade-os", "1.1", 4, manifest_digest(new).hex())
    assert booted_release(policy, appraisal(matched_release="uki-6.1")) == BootedRelease("uki-6.1")
    # Asked again under the same references: the same answer (kept per policy version).
    assert booted_release(policy, appraisal(matched_release="stockade-os 1.0")) == BootedRelease(
        "stockade-os", "1.0", 3, manifest_digest(old).hex()
    )


def test_no_match_records_no_release() -> None:
    policy = active((manifest("1.0", 3),))
    assert booted_release(policy, appraisal()) is None
    assert booted_release(policy, appraisal(matched_release="unknown 9")) is None
    # A policy without releases (the quote-only test appraiser's) has none to name.
    bare = ActivePolicy("p", 1, SimpleNamespace(), object())  # type: ignore[arg-type]
    assert booted_release(bare, appraisal(matched_release="stockade-os 1.0")) is None
