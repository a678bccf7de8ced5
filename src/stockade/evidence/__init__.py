"""Pure evidence code: TPM structures, quotes, credentials, EK certificates.

Never imports tpm2_pytss, never does I/O, never reads the clock: a verifier
on a machine without libtss2 uses exactly this.
"""

from stockade.evidence.attest import Attest, AttestType, ClockInfo
from stockade.evidence.clock import check_clock_progression, is_new_boot
from stockade.evidence.credential import CredentialBlob, make_credential
from stockade.evidence.ek_certificate import ValidatedEk, validate_ek_certificate
from stockade.evidence.errors import (
    ClockRollback,
    CredentialError,
    EkCertificateInvalid,
    EvidenceError,
    EvidenceInvalid,
    MalformedStructure,
    QuoteInvalid,
    UnsupportedAlgorithm,
)
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.public import TpmPublic
from stockade.evidence.quote import VerifiedQuote, verify_quote
from stockade.evidence.signature import Signature

__all__ = [
    "Attest",
    "AttestType",
    "ClockInfo",
    "ClockRollback",
    "CredentialBlob",
    "CredentialError",
    "EkCertificateInvalid",
    "EvidenceError",
    "EvidenceInvalid",
    "MalformedStructure",
    "PcrSelection",
    "PcrValues",
    "QuoteInvalid",
    "Signature",
    "TpmPublic",
    "UnsupportedAlgorithm",
    "ValidatedEk",
    "VerifiedQuote",
    "check_clock_progression",
    "is_new_boot",
    "make_credential",
    "validate_ek_certificate",
    "verify_quote",
]
