"""Boot a development node: reset its software TPM, then run the virtual firmware, shim
and bootloader, extending the TPM with every measurement and writing the TCG event
log, in the order ``stockade.appraisal.measured_boot`` defines.

The firmware, shim and bootloader logic (what is measured, into which PCR, when)
is that pure sequence; this module only supplies what it needs from the outside
(digests of the files being booted, Secure Boot verification with sbverify) and
does what it asks: each measurement is extended into the TPM with exactly the
digests it is logged with, before the next one is computed. When Secure Boot
refuses a stage, the boot stops there: the log and the PCRs hold everything up to,
and nothing of, the refused image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stockade.appraisal.measured_boot import (
    Measurement,
    StageImage,
    event_log,
    measured_boot,
)
from stockade.boot.errors import BootHalted, BootInputError
from stockade.boot.platform import DevelopmentPlatform
from stockade.boot.release import ReleaseImages, measure_release
from stockade.boot.secure_boot import authorize_image
from stockade.evidence.efi_signatures import SignatureEntry
from stockade.evidence.eventlog import EventLog
from stockade.evidence.marshal import Writer
from stockade.tpm.swtpm import SoftwareTpm

EVENT_LOG_NAME = "binary_bios_measurements"


@dataclass(frozen=True)
class BootResult:
    """The event log a boot wrote (parsed back from its bytes), where, and how it ended."""

    log: EventLog
    log_bytes: bytes
    log_path: Path
    banks: tuple[int, ...]
    halted: BootHalted | None

    @property
    def booted(self) -> bool:
        return self.halted is None

    def check(self) -> None:
        """Raise the ``BootHalted`` error if Secure Boot stopped the boot."""
        if self.halted is not None:
            raise self.halted


class TpmExtender:
    """PCR_Extend with given digests (the TPM layer's ``extend_pcr`` hashes data itself)."""

    def __init__(self, tcti: str) -> None:
        from stockade.tpm.device import Tpm

        self.tpm = Tpm(tcti)

    def banks(self) -> tuple[int, ...]:
        """Every active bank Stockade can hash (the TPM layer drops others, e.g. SM3)."""
        return tuple(bank.hash_alg for bank in self.tpm.active_banks().banks)

    def extend(self, measurement: Measurement) -> None:
        from tpm2_pytss.constants import ESYS_TR
        from tpm2_pytss.types import TPML_DIGEST_VALUES

        from stockade.tpm.device import tpm_command

        wire = Writer().u32(len(measurement.digests))
        for alg, digest in measurement.digests:
            wire.u16(alg).raw(digest)
        digests, _ = TPML_DIGEST_VALUES.unmarshal(wire.bytes())
        with tpm_command("PCR_Extend"):
            self.tpm.esys.pcr_extend(ESYS_TR.parse(f"pcr{measurement.pcr}"), digests)

    def close(self) -> None:
        self.tpm.close()


def _stage_files(platform: DevelopmentPlatform, release: ReleaseImages) -> dict[str, Path]:
    files = {stage.name: stage.image for stage in platform.stages}
    files["kernel"] = release.kernel
    return files


def write_log(path: Path, data: bytes) -> None:
    """Write the log atomically (a reader never sees half a log)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_bytes(data)
        temporary.replace(path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise BootInputError(f"cannot write event log '{path}': {error.strerror}") from None


def event_log_path(tpm: SoftwareTpm) -> Path:
    """Where a development node's event log lives: beside its swtpm's state, named like
    the file the kernel exposes in securityfs, so the agent finds it from the TPM name."""
    return tpm.instance_dir / EVENT_LOG_NAME


def boot_node(
    tpm: SoftwareTpm,
    platform: DevelopmentPlatform,
    release: ReleaseImages,
    *,
    log_path: Path | None = None,
) -> BootResult:
    """Power-cycle ``tpm`` (from the platform's startup locality) and boot ``release`` on
    ``platform``. The log is written to ``event_log_path(tpm)`` (and copied to
    ``log_path``); a Secure Boot refusal is ``result.halted``, not an exception, so the
    partial log is never lost."""
    node_log = event_log_path(tpm)
    tpm.power_cycle(startup_locality=platform.startup_locality)
    node_log.unlink(missing_ok=True)  # the previous boot's log no longer describes the PCRs
    # Likewise the execution log (PCR 13): a new boot starts it empty, as a tmpfs would.
    from stockade.tpm.swtpm import EXECUTION_LOG_NAME

    (tpm.instance_dir / EXECUTION_LOG_NAME).unlink(missing_ok=True)
    extender = TpmExtender(tpm.tcti)
    try:
        banks = extender.banks()
        measurements = _run(extender, platform, release, banks)
    finally:
        extender.close()
    data = event_log(banks, measurements.done).marshal()
    write_log(node_log, data)
    if log_path is not None:
        write_log(log_path, data)
    return BootResult(EventLog.parse(data), data, node_log, banks, measurements.halted)


@dataclass
class _Progress:
    done: list[Measurement]
    halted: BootHalted | None = None


def _run(
    extender: TpmExtender,
    platform: DevelopmentPlatform,
    release: ReleaseImages,
    banks: Sequence[int],
) -> _Progress:
    files = _stage_files(platform, release)

    def authorize(stage: StageImage) -> SignatureEntry:
        return authorize_image(
            stage.name, stage.esp_path, files[stage.name], platform.db, platform.dbx
        )

    progress = _Progress([])
    sequence = measured_boot(
        platform.measure(banks), measure_release(release, banks), banks, authorize
    )
    try:
        for measurement in sequence:
            if measurement.extends:
                extender.extend(measurement)
            progress.done.append(measurement)
    except BootHalted as halted:
        progress.halted = halted
    return progress
