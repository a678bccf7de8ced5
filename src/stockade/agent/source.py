"""Where a node's evidence comes from: its TPM (a TCTI) and its boot event log.

Hardware first: ``/dev/tpmrm0`` with the kernel's
``/sys/kernel/security/tpm0/binary_bios_measurements``. Without them, a
development TPM (swtpm) started by ``stockade tpm start`` or the test fixtures,
whose log ``stockade boot node`` writes beside its state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stockade.errors import InputError, TpmUnavailable

HARDWARE_DEVICE = Path("/dev/tpmrm0")
HARDWARE_TCTI = "device:/dev/tpmrm0"
HARDWARE_EVENT_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
EVENT_LOG_NAME = "binary_bios_measurements"
# The execution log (PCR 13, docs/execution-log.md) lives on a tmpfs, so it starts empty with
# every boot, as PCR 13 does; a development node's lives beside its TPM and its boot log.
HARDWARE_EXECUTION_LOG = Path("/run/stockade/execution.log")


@dataclass(frozen=True)
class NodeSource:
    tcti: str
    event_log: Path
    description: str
    execution_log: Path = HARDWARE_EXECUTION_LOG

    def read_event_log(self) -> bytes:
        try:
            return self.event_log.read_bytes()
        except OSError as error:
            raise InputError(
                f"cannot read the boot event log '{self.event_log}': {error.strerror or error}"
            ) from None


def resolve_source(
    *,
    tcti: str | None = None,
    tpm_name: str | None = None,
    event_log: Path | None = None,
    home: Path | None = None,
) -> NodeSource:
    """An explicit ``tcti`` or development ``tpm_name`` wins; else hardware if present;
    else the only running development TPM."""
    if tcti is not None:
        if event_log is None:
            raise InputError("--tcti needs --event-log (the boot log of that TPM's node)")
        return NodeSource(tcti, event_log, f"TPM {tcti}")
    if tpm_name is None and HARDWARE_DEVICE.exists() and HARDWARE_EVENT_LOG.exists():
        return NodeSource(
            HARDWARE_TCTI, event_log or HARDWARE_EVENT_LOG, f"hardware TPM {HARDWARE_DEVICE}"
        )
    return _development_source(tpm_name, event_log, home)


def _development_source(name: str | None, event_log: Path | None, home: Path | None) -> NodeSource:
    from stockade.tpm.swtpm import EXECUTION_LOG_NAME, known_swtpms

    tpms = [tpm for tpm in known_swtpms(home) if tpm.is_running()]
    if name is not None:
        chosen = [tpm for tpm in tpms if tpm.name == name]
        if not chosen:
            raise TpmUnavailable(f"no running development TPM named {name!r} (stockade tpm list)")
    elif len(tpms) == 1:
        chosen = tpms
    else:
        raise TpmUnavailable(
            f"no {HARDWARE_DEVICE} and {len(tpms)} running development TPMs: "
            "pass --tpm NAME or --tcti"
        )
    tpm = chosen[0]
    log = event_log or tpm.instance_dir / EVENT_LOG_NAME
    return NodeSource(
        tpm.tcti,
        log,
        f"development TPM {tpm.name!r} ({tpm.tcti})",
        tpm.instance_dir / EXECUTION_LOG_NAME,
    )
