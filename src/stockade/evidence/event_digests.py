"""Events whose digest must be the hash of their own data, and those where it is not.

For most event types the firmware measures something other than the event
data (an image, a blob in memory), so the digest cannot be checked from the
log alone. For the types below, PFP 10.4 says what was hashed, and a digest
that differs means the log's description of the measurement is not what was
measured (tpm2_eventlog warns about the same events):

- EV_SEPARATOR, EV_ACTION, EV_EFI_ACTION, EV_S_CRTM_VERSION,
  EV_EFI_VARIABLE_DRIVER_CONFIG, EV_EFI_GPT_EVENT: the event data.
- EV_EFI_VARIABLE_BOOT / BOOT2: the event data; older firmware hashed only
  VariableData, which is accepted too.
- EV_IPL written by systemd-boot (UTF-16 text): the event data.
- EV_IPL written by grub for a command or the kernel command line
  ("grub_cmd: ...", "kernel_cmdline: ..."): the text after the first space,
  with or without its NUL. grub's EV_IPL events naming a file (PCR 9) carry the
  file's digest and cannot be checked from the log.

tpm2_eventlog 5.4 checks the EV_IPL rules; the others are the PFP's.
"""

from __future__ import annotations

from dataclasses import dataclass

from stockade.evidence.algorithms import HASHES
from stockade.evidence.event_data import TextData, UefiVariableData, decode
from stockade.evidence.eventlog import Event, EventLog, EventType

_DATA_IS_MEASURED = frozenset(
    {
        EventType.EV_SEPARATOR,
        EventType.EV_ACTION,
        EventType.EV_EFI_ACTION,
        EventType.EV_S_CRTM_VERSION,
        EventType.EV_EFI_VARIABLE_DRIVER_CONFIG,
        EventType.EV_EFI_GPT_EVENT,
    }
)
GRUB_STRING_PREFIXES = ("grub_cmd: ", "kernel_cmdline: ")
_BOOT_VARIABLES = frozenset({EventType.EV_EFI_VARIABLE_BOOT, EventType.EV_EFI_VARIABLE_BOOT2})


@dataclass(frozen=True)
class DigestMismatch:
    event_number: int
    pcr: int
    event_type: str
    bank: str

    def __str__(self) -> str:
        return (
            f"event {self.event_number} ({self.event_type}, PCR {self.pcr}): "
            f"{self.bank} digest is not the hash of the event data"
        )


def _acceptable_inputs(event: Event) -> list[bytes] | None:
    """What the digest may be the hash of, or None when it cannot be checked."""
    if event.type in _DATA_IS_MEASURED:
        return [event.data]
    if event.type in _BOOT_VARIABLES:
        decoded = decode(event)
        if isinstance(decoded, UefiVariableData):
            return [event.data, decoded.variable_data]
        return [event.data]
    if event.type == EventType.EV_IPL:
        decoded = decode(event)
        if isinstance(decoded, TextData) and decoded.utf16:
            return [event.data]
        if isinstance(decoded, TextData) and decoded.text.startswith(GRUB_STRING_PREFIXES):
            measured = decoded.text.split(" ", 1)[1].encode()
            return [measured, measured + b"\x00"]
    return None


def data_is_measured(event: Event) -> bool | None:
    """True when every digest ``event`` carries is the hash of its data (as the rules
    above define it), False when one is not, None when the type cannot be checked or
    the event carries no digest Stockade can compute (nothing was checked)."""
    inputs = _acceptable_inputs(event)
    if inputs is None:
        return None
    checked = False
    for algorithm, digest in event.digests:
        hash_ = HASHES.get(algorithm)
        if hash_ is None:
            continue
        if all(hash_.digest(c) != digest for c in inputs):
            return False
        checked = True
    return True if checked else None


def digest_mismatches(log: EventLog) -> list[DigestMismatch]:
    """Every event, per bank, whose digest should be the hash of its data but is not."""
    mismatches = []
    for event in log.events:
        inputs = _acceptable_inputs(event)
        if inputs is None:
            continue
        for algorithm, digest in event.digests:
            hash_ = HASHES.get(algorithm)
            if hash_ is None:
                continue
            if all(hash_.digest(candidate) != digest for candidate in inputs):
                mismatches.append(
                    DigestMismatch(event.number, event.pcr, event.type_name, hash_.name)
                )
    return mismatches
