"""Signed OS releases on a captured (real) platform.

A golden machine's capture (``appraisal.captured``) says what its firmware, Secure Boot
configuration, shim and bootloader measure. A signed Stockade release (its DSSE manifest)
says what the bootloader then measures of the OS, whatever the platform: the GRUB
configuration, kernel, initrd and command line into PCRs 8 and 9, and the release and its
/usr dm-verity root hash into PCR 12 (``measured_boot.release_measurements``), and the
kernel's Authenticode digest, which the firmware measures into PCR 4 when the bootloader
loads the kernel.

``captured_with_release`` combines the two into the captured policy a node booting that
release on that platform must match: the capture's PCRs 8, 9 and 12 replaced by the
release's, and the capture's last boot application in PCR 4 (the kernel the golden machine
booted) replaced by the release's kernel. Everything else (firmware, the PCR 7 authorities,
shim's PCR 14) stays the capture's: a kernel signed by another key than the golden
machine's puts another authority into PCR 7 and is named there. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import replace

from stockade.appraisal.captured import (
    CapturedEvent,
    CapturedPcr,
    CapturedPolicy,
    CapturedVariant,
    describe_event,
    events_value,
)
from stockade.appraisal.measured_boot import (
    BOOT_MANAGER_CODE_PCR,
    MeasurementInputError,
    release_measurements,
)
from stockade.appraisal.release_reference import release_reference_from_manifest
from stockade.appraisal.uki import PCR_KERNEL_IMAGE, UkiReference
from stockade.evidence.algorithms import HASHES, Alg
from stockade.evidence.eventlog import Event, EventType, event_type_name
from stockade.release.manifest import Manifest

BOOT_APPLICATION = event_type_name(EventType.EV_EFI_BOOT_SERVICES_APPLICATION)


class ReleaseNotCombinable(MeasurementInputError):
    """A captured platform a release cannot be combined with (no sha256 bank, no kernel)."""


def release_label(manifest: Manifest) -> str:
    return f"{manifest.name} {manifest.version}"


def _with_kernel(
    variant: CapturedVariant, kernel: bytes, label: str, bank: int
) -> CapturedVariant | None:
    """``variant`` with its last boot application the release's kernel (None: it loads
    none). Its value follows when every event is exact; per-machine values do not."""
    positions = [n for n, event in enumerate(variant.events) if event.type == BOOT_APPLICATION]
    if not positions:
        return None
    events = list(variant.events)
    loaded = events[positions[-1]]
    events[positions[-1]] = CapturedEvent(
        loaded.index, loaded.type, f"the kernel of {label} (Authenticode)", kernel
    )
    exact = all(event.exact for event in events)
    return replace(
        variant,
        value=events_value(events, bank) if exact else None,
        values=(),
        events=tuple(events),
    )


def captured_with_release(captured: CapturedPolicy, manifest: Manifest) -> CapturedPolicy:
    """The captured policy of ``manifest`` (verified by the caller) booted on ``captured``'s
    platform (see the module docstring); ``ReleaseNotCombinable`` when it cannot be."""
    if captured.bank != Alg.SHA256:
        raise ReleaseNotCombinable(
            f"release manifests carry sha256 digests; the captured platform is in "
            f"{HASHES[captured.bank].name}"
        )
    label = release_label(manifest)
    release = release_reference_from_manifest(manifest)
    by_pcr: dict[int, list[CapturedEvent]] = {}
    for position, measurement in enumerate(release_measurements(release, (Alg.SHA256,))):
        event = Event(position, measurement.pcr, measurement.event_type, measurement.digests,
                      measurement.data)  # fmt: skip
        by_pcr.setdefault(measurement.pcr, []).append(
            CapturedEvent(
                position,
                event.type_name,
                f"{label}: {describe_event(event)}",
                dict(measurement.digests)[Alg.SHA256],
            )
        )
    pcrs = dict(captured.pcrs)
    for index, events in by_pcr.items():
        pcrs[index] = CapturedPcr(events_value(events, captured.bank), events)
    return _booting(captured, pcrs, release.kernel_authenticode[Alg.SHA256], label)


def captured_with_uki(captured: CapturedPolicy, uki: UkiReference) -> CapturedPolicy:
    """The captured policy of the UKI release ``uki`` booted on ``captured``'s platform: the
    UKI is PCR 4's last boot application, and PCR 11 leaves the event comparison (the
    verifier compares its quoted value with ``uki.pcr11``: systemd-pcrphase extends it
    without logging, so a running system's log never replays to it)."""
    if captured.bank != Alg.SHA256:
        raise ReleaseNotCombinable(
            f"UKI references are sha256; the captured platform is in {HASHES[captured.bank].name}"
        )
    pcrs = {index: pcr for index, pcr in captured.pcrs.items() if index != PCR_KERNEL_IMAGE}
    return _booting(captured, pcrs, uki.authenticode, uki.name)


def _booting(
    captured: CapturedPolicy, pcrs: dict[int, CapturedPcr], kernel: bytes, label: str
) -> CapturedPolicy:
    """``captured`` with ``pcrs``, PCR 4's last boot application of every variant the
    kernel (or UKI) ``label`` whose Authenticode digest is ``kernel``."""
    boot_manager = pcrs.get(BOOT_MANAGER_CODE_PCR)
    variants = [
        combined
        for variant in (boot_manager.variants if boot_manager else ())
        if (combined := _with_kernel(variant, kernel, label, captured.bank)) is not None
    ]
    if not variants:
        raise ReleaseNotCombinable(
            f"the captured platform {captured.policy_id} loads no boot application in PCR "
            f"{BOOT_MANAGER_CODE_PCR} to be the kernel of {label}"
        )
    pcrs[BOOT_MANAGER_CODE_PCR] = CapturedPcr(variants=variants)
    return replace(captured, policy_id=f"{captured.policy_id}+{label}", pcrs=pcrs)
