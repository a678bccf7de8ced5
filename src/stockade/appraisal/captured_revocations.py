"""What a golden machine's PCR 7 revokes, so a later log may revoke more, never less.

Two PCR 7 events change when a fleet takes a security update rather than a new boot chain:
the firmware's ``dbx`` (EV_EFI_VARIABLE_DRIVER_CONFIG, the forbidden signatures database:
image digests and certificates, UEFI 2.10 32.6.1) and shim's ``SbatLevel``
(EV_EFI_VARIABLE_AUTHORITY, the minimum SBAT generation of each component, as CSV
``sbat,1,<date>\\nshim,<gen>\\ngrub,<gen>\\n...``). A captured policy records what the golden
machine's ones contain (``Revocations``, ``SbatLevel``); ``captured.appraise_captured`` then
accepts one whose digest differs when it is at least as strict: every revocation of the
reference dbx present, every SBAT generation and the sbat date at least the reference's.

Only measured data counts: ``measured_variable`` checks first that the event's digest in
every verified bank is the hash of the whole UEFI_VARIABLE_DATA the log shows, and only
then decodes it, so a log cannot describe a stricter variable than the firmware measured.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stockade.evidence.algorithms import HASHES
from stockade.evidence.efi_signatures import parse_signature_lists
from stockade.evidence.errors import EvidenceError
from stockade.evidence.event_data import UefiVariableData, decode
from stockade.evidence.eventlog import Event

EFI_IMAGE_SECURITY_DATABASE_GUID = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
SHIM_LOCK_GUID = uuid.UUID("605dab50-e046-4300-abb6-3dd810dd8b23")
DBX = "dbx"
SBAT_LEVEL = "SbatLevel"
NAMED_AT_MOST = 3  # missing revocations named in a reason; the rest are counted


@dataclass(frozen=True)
class Revocations:
    """The entries of a dbx: image digests (EFI_CERT_SHA256) and the sha256 of each
    revoked certificate (EFI_CERT_X509), each in the order the variable lists them."""

    sha256: tuple[bytes, ...]
    x509: tuple[bytes, ...]

    def to_document(self) -> dict[str, Any]:
        return {
            "sha256": [digest.hex() for digest in self.sha256],
            "x509": [digest.hex() for digest in self.x509],
        }

    def missing_from(self, found: Revocations) -> list[str]:
        """This reference's revocations that ``found`` lacks, each as ``kind hex``."""
        have_sha256, have_x509 = set(found.sha256), set(found.x509)
        missing = [f"sha256 {d.hex()}" for d in self.sha256 if d not in have_sha256]
        missing += [f"x509 sha256 {d.hex()}" for d in self.x509 if d not in have_x509]
        return missing


def dbx_revocations(variable_data: bytes) -> Revocations | None:
    """The revocations of a dbx's data, or None when it is not signature lists of only
    EFI_CERT_SHA256 and EFI_CERT_X509 entries (then only its exact digest is accepted:
    an entry kind not recorded could not be required)."""
    try:
        lists = parse_signature_lists(variable_data)
    except EvidenceError:
        return None
    sha256: list[bytes] = []
    x509: list[bytes] = []
    for signature_list in lists:
        if signature_list.is_sha256:
            if any(len(entry.data) != 32 for entry in signature_list.entries):
                return None
            sha256.extend(entry.data for entry in signature_list.entries)
        elif signature_list.is_x509:
            x509.extend(hashlib.sha256(entry.data).digest() for entry in signature_list.entries)
        else:
            return None
    return Revocations(tuple(sha256), tuple(x509))


@dataclass(frozen=True)
class SbatLevel:
    """shim's SbatLevel: the sbat line's date and each component's minimum generation."""

    date: str  # digits, e.g. 2023012900
    components: tuple[tuple[str, int], ...]  # (component, generation), sorted by component

    def to_document(self) -> dict[str, Any]:
        return {"date": self.date, "components": dict(self.components)}

    def older_than(self, reference: SbatLevel) -> list[str]:
        """How this level is less strict than ``reference``, one reason per component."""
        reasons = []
        if int(self.date) < int(reference.date):
            reasons.append(f"sbat date {self.date} is older than the policy's {reference.date}")
        mine = dict(self.components)
        for component, generation in reference.components:
            found = mine.get(component)
            if found is None:
                reasons.append(
                    f"component {component} is absent (the policy requires generation {generation})"
                )
            elif found < generation:
                reasons.append(
                    f"component {component} is at generation {found}, older than the "
                    f"policy's {generation}"
                )
        return reasons


def parse_sbat_level(variable_data: bytes) -> SbatLevel | None:
    """shim's SbatLevel CSV, or None when it is not one: a first line ``sbat,<gen>,<date>``,
    then ``component,<generation>[,...]`` lines, each component once."""
    try:
        text = variable_data.rstrip(b"\x00").decode("ascii")
    except UnicodeDecodeError:
        return None
    lines = [line.strip() for line in text.split("\n") if line.strip()]
    components: dict[str, int] = {}
    date = ""
    for number, line in enumerate(lines):
        fields = line.split(",")
        name = fields[0]
        if len(fields) < 2 or not name or not fields[1].isdigit() or name in components:
            return None
        if number == 0:
            if name != "sbat" or len(fields) < 3 or not fields[2].isdigit():
                return None
            date = fields[2]
        components[name] = int(fields[1])
    if not components:
        return None
    return SbatLevel(date, tuple(sorted(components.items())))


def measured_variable(
    event: Event, banks: Sequence[int], name: str, guid: uuid.UUID
) -> UefiVariableData | str:
    """The UEFI variable ``name`` an event measured, once its digest in every bank of
    ``banks`` is checked to be the hash of the whole event data; else why not (a reason)."""
    for alg in banks:
        if HASHES[alg].digest(event.data) != event.digest(alg):
            return (
                f"its {HASHES[alg].name} digest is not the hash of the data the log shows, so "
                f"the log does not say which {name} was measured"
            )
    decoded = decode(event)
    if not isinstance(decoded, UefiVariableData):
        return "its data is not a UEFI variable"
    if decoded.unicode_name != name or decoded.variable_name != guid:
        return f"it measured {decoded.unicode_name} ({decoded.variable_name}), not {name}"
    return decoded


def shown_missing(missing: Sequence[str]) -> str:
    """``N: the first few`` of a list of missing revocations."""
    named = ", ".join(missing[:NAMED_AT_MOST])
    more = f" and {len(missing) - NAMED_AT_MOST} more" if len(missing) > NAMED_AT_MOST else ""
    return f"{len(missing)} ({named}{more})"
