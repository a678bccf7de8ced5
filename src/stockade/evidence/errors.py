"""Typed errors for evidence parsing and verification.

Every failure names what failed: the structure and byte offset for a parse,
the check and the values involved for a verification.
"""

from __future__ import annotations

from dataclasses import dataclass

from stockade.errors import InputError, VerificationFailed


class EvidenceError(InputError):
    """Base class for anything wrong with a piece of evidence."""


class MalformedStructure(EvidenceError):
    """Bytes that do not decode as the TPM structure they claim to be."""

    def __init__(self, structure: str, offset: int, reason: str) -> None:
        super().__init__(f"{structure}: {reason} at byte offset {offset}")
        self.structure = structure
        self.offset = offset
        self.reason = reason


class UnsupportedAlgorithm(EvidenceError):
    """A well-formed structure names an algorithm Stockade does not accept."""

    def __init__(self, what: str, algorithm: int | str) -> None:
        shown = f"0x{algorithm:04x}" if isinstance(algorithm, int) else repr(algorithm)
        super().__init__(f"unsupported {what} algorithm {shown}")
        self.what = what
        self.algorithm = algorithm


class EvidenceInvalid(EvidenceError, VerificationFailed):
    """Evidence decoded fine but a security check on it failed (exit code 1)."""

    exit_code = 1

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


class QuoteInvalid(EvidenceInvalid):
    """A TPM quote failed verification; ``check`` names which check."""


class ClockRollback(QuoteInvalid):
    """resetCount/restartCount went back, or the clock did not advance within a boot."""


class CredentialError(EvidenceInvalid):
    """Credential protection (MakeCredential) could not be performed."""


class EkCertificateInvalid(EvidenceInvalid):
    """An EK certificate does not chain to a trusted vendor CA or does not match the EK."""


@dataclass(frozen=True)
class PcrMismatch:
    """One PCR of one bank whose replayed value is not the quoted one (like go-attestation's
    ``ReplayError``: which PCR, which bank, both values, and the last event measured there).
    ``replayed`` and ``last_event`` are None when the PCR was not quoted at all."""

    pcr: int
    bank: str
    quoted: bytes | None
    replayed: bytes | None
    last_event: int | None = None  # the event's number in the log
    last_event_type: str | None = None


class EventLogMismatch(EvidenceInvalid):
    """An event log does not replay to the PCR values the TPM quoted; ``mismatches`` names
    each PCR and bank that differs."""

    def __init__(self, check: str, detail: str, mismatches: tuple[PcrMismatch, ...] = ()) -> None:
        super().__init__(check, detail)
        self.mismatches = mismatches


class AkCertificateInvalid(EvidenceInvalid):
    """An AK certificate (a cloud vTPM's) does not chain to a trusted AK CA, is not valid now,
    or does not certify the restricted signing key the node presents as its AK."""


class InstanceIdentityMalformed(EvidenceError):
    """A cloud instance identity extension that does not decode as its ASN.1 structure."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"instance identity extension: {detail}")
        self.detail = detail
