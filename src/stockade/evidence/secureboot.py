"""Secure Boot state as an attested event log shows it (PFP 3.3.4.8 "PCR[7]",
UEFI 2.10 32.4 "Firmware/OS Key Exchange").

Everything here reads ``VerifiedEventLog.trusted_events()``: events replayed
against quoted PCRs first, each carrying a digest for every bank the replay was
checked in. PCR 7 must be among the trusted PCRs, or the state is unknown and
``SecureBootUnknown`` is raised (fail closed); images and command lines are read
only from PCRs 4, 8, 9 and 12 when those are trusted. Digests are reported, and
compared with event data, only in the verified banks: a digest for a bank the
quote did not cover proves nothing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from cryptography import x509

from stockade.evidence.algorithms import HASHES
from stockade.evidence.efi_signatures import SignatureList, parse_signature_lists
from stockade.evidence.errors import EvidenceError, EvidenceInvalid
from stockade.evidence.event_data import ImageLoadData, TextData, UefiVariableData, decode
from stockade.evidence.event_digests import data_is_measured
from stockade.evidence.eventlog import Event, EventType
from stockade.evidence.replay import VerifiedEventLog

SECURE_BOOT_PCR = 7
BOOT_MANAGER_CODE_PCR = 4
KEY_VARIABLES = ("PK", "KEK", "db", "dbx")
GRUB_CMDLINE_PREFIX = "kernel_cmdline: "


class SecureBootUnknown(EvidenceInvalid):
    """The attested PCRs do not cover what a Secure Boot decision needs."""


@dataclass(frozen=True)
class KeyDatabase:
    """One of PK, KEK, db, dbx as the firmware measured it."""

    name: str
    signature_lists: tuple[SignatureList, ...]

    def certificates(self) -> list[x509.Certificate]:
        """The X.509 entries; vendor certificates with RFC 5280 flaws (negative
        serials) load with a warning from cryptography, which is silenced."""
        found = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for signature_list in self.signature_lists:
                if signature_list.is_x509:
                    for entry in signature_list.entries:
                        try:
                            found.append(x509.load_der_x509_certificate(entry.data))
                        except ValueError:
                            continue
        return found

    def sha256_digests(self) -> list[bytes]:
        return [
            entry.data
            for signature_list in self.signature_lists
            if signature_list.is_sha256
            for entry in signature_list.entries
        ]


@dataclass(frozen=True)
class BootApplication:
    """An EFI application the firmware loaded (PCR 4), and the authority that allowed it."""

    event_number: int
    digests: dict[str, str]  # verified bank -> hex Authenticode digest
    device_path: str
    authority: bytes | None  # EFI_SIGNATURE_DATA (owner GUID + certificate) from PCR 7


@dataclass(frozen=True)
class SecureBootState:
    enabled: bool
    keys: dict[str, KeyDatabase]
    authorities: tuple[bytes, ...]  # every EV_EFI_VARIABLE_AUTHORITY in order
    boot_applications: tuple[BootApplication, ...]
    kernel_command_line: str | None


def _variable(event: Event) -> UefiVariableData | None:
    decoded = decode(event)
    return decoded if isinstance(decoded, UefiVariableData) else None


def _verified_digests(event: Event, banks: tuple[int, ...]) -> dict[str, str]:
    """The event's digests in the banks its replay was checked in, by bank name."""
    found = {}
    for alg in banks:
        digest = event.digest(alg)
        if digest is not None:  # always: trusted events carry every verified bank
            found[HASHES[alg].name] = digest.hex()
    return found


def _command_line(event: Event) -> str | None:
    if data_is_measured(event) is not True:
        return None  # the text is only a description unless its digest is of the text
    decoded = decode(event)
    if not isinstance(decoded, TextData):
        return None
    if decoded.text.startswith(GRUB_CMDLINE_PREFIX):
        return decoded.text.removeprefix(GRUB_CMDLINE_PREFIX)
    if decoded.utf16:  # systemd-boot (PCR 8) and systemd-stub (PCR 12) measure UTF-16
        return decoded.text
    return None


def secure_boot_state(verified: VerifiedEventLog) -> SecureBootState:
    """Decode Secure Boot state from an attested log, or raise ``SecureBootUnknown``."""
    if SECURE_BOOT_PCR not in verified.trusted_pcrs:
        raise SecureBootUnknown("pcr7", "PCR 7 was not attested, so Secure Boot state is unknown")
    enabled: bool | None = None
    keys: dict[str, KeyDatabase] = {}
    authorities: list[bytes] = []
    applications: list[BootApplication] = []
    pending_authority: bytes | None = None
    command_line: str | None = None
    for event in verified.trusted_events():
        if event.pcr == SECURE_BOOT_PCR and event.type == EventType.EV_EFI_VARIABLE_DRIVER_CONFIG:
            if data_is_measured(event) is not True:
                raise SecureBootUnknown(
                    "pcr7",
                    f"event {event.number}: the digest in PCR 7 is not of the variable the "
                    "log shows, so the log does not say what was measured",
                )
            variable = _variable(event)
            if variable is None:
                raise SecureBootUnknown(
                    "pcr7", f"event {event.number} in PCR 7 is not a UEFI variable"
                )
            if variable.unicode_name == "SecureBoot":
                enabled = variable.variable_data == b"\x01"
            elif variable.unicode_name in KEY_VARIABLES:
                try:
                    lists = parse_signature_lists(variable.variable_data)
                except EvidenceError as error:
                    raise SecureBootUnknown(
                        "pcr7",
                        f"event {event.number}: {variable.unicode_name} is malformed: {error}",
                    ) from None
                keys[variable.unicode_name] = KeyDatabase(variable.unicode_name, lists)
        elif event.pcr == SECURE_BOOT_PCR and event.type == EventType.EV_EFI_VARIABLE_AUTHORITY:
            variable = _variable(event)
            # Only an authority whose digest is of its data says which entry was used.
            bound = all(
                HASHES[alg].digest(event.data) == event.digest(alg) for alg in verified.banks
            )
            if variable is not None and bound:
                authorities.append(variable.variable_data)
                pending_authority = variable.variable_data
        elif (
            event.pcr == BOOT_MANAGER_CODE_PCR
            and event.type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION
        ):
            image = decode(event)
            path = image.to_json()["DevicePath"] if isinstance(image, ImageLoadData) else ""
            applications.append(
                BootApplication(
                    event.number, _verified_digests(event, verified.banks), path, pending_authority
                )
            )
            pending_authority = None
        elif event.pcr in (8, 12) and event.type == EventType.EV_IPL:
            found = _command_line(event)
            if found is not None:
                command_line = found
    if enabled is None:
        raise SecureBootUnknown("pcr7", "the log does not measure the SecureBoot variable")
    return SecureBootState(enabled, keys, tuple(authorities), tuple(applications), command_line)
