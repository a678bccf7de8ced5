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

from collections.abc import Iterable

from stockade.appraisal.captured import (
    CapturedEvent,
    CapturedPcr,
    CapturedPolicy,
    _extend,
    describe_event,
)
from stockade.appraisal.measured_boot import (
    BOOT_MANAGER_CODE_PCR,
    MeasurementInputError,
    release_measurements,
)
from stockade.appraisal.release_reference import release_reference_from_manifest
from stockade.evidence.algorithms import HASHES, Alg
from stockade.evidence.eventlog import Event, EventType, event_type_name
from stockade.release.manifest import Manifest

BOOT_APPLICATION = event_type_name(EventType.EV_EFI_BOOT_SERVICES_APPLICATION)


class ReleaseNotCombinable(MeasurementInputError):
    """A captured platform a release cannot be combined with (no sha256 bank, no kernel)."""


def release_label(manifest: Manifest) -> str:
    return f"{manifest.name} {manifest.version}"


def _pcr(events: Iterable[CapturedEvent], bank: int) -> CapturedPcr:
    listed = tuple(events)
    zero = bytes(HASHES[bank].digest_size)
    return CapturedPcr(_extend(zero, (event.digest for event in listed), bank), listed)


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
        pcrs[index] = _pcr(events, captured.bank)
    boot_manager = pcrs.get(BOOT_MANAGER_CODE_PCR)
    applications = [
        position
        for position, event in enumerate(boot_manager.events if boot_manager else ())
        if event.type == BOOT_APPLICATION
    ]
    if boot_manager is None or not applications:
        raise ReleaseNotCombinable(
            f"the captured platform {captured.policy_id} loads no boot application in PCR "
            f"{BOOT_MANAGER_CODE_PCR} to be the kernel of {label}"
        )
    kernel = boot_manager.events[applications[-1]]
    events = list(boot_manager.events)
    events[applications[-1]] = CapturedEvent(
        kernel.index,
        kernel.type,
        f"the kernel of {label} (Authenticode)",
        release.kernel_authenticode[Alg.SHA256],
    )
    pcrs[BOOT_MANAGER_CODE_PCR] = _pcr(events, captured.bank)
    return CapturedPolicy(f"{captured.policy_id}+{label}", captured.bank, pcrs)
